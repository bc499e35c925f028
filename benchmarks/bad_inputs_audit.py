"""Audit of bad inputs: does a person who gives napari-samkit something wrong get one clear line?

Re-runs a fixed list of mistakes, each in its own temporary folder built here (small real
images: ``skimage.data.coins()``), against

* the command line (``samkit segment/embed/sample/download``, run as a program), and
* the Python API (``import napari_sam``: ``Predictor``, ``masks_to_labels``,
  ``segment_from_labels``, ``generate_masks``), each case in a child process,

and prints a Markdown table, the totals and the list of defects. For every case:

* **result**: the exit status (CLI) or the exception type (Python; ``ok`` if none), against
  the expected one (the documented statuses: 2 bad input, 3 model file, 4 download, 6 a
  batch in which some images failed; 1 means "this is a bug");
* **clean**: the person got one clear message: CLI, no ``Traceback`` on stderr and one
  ``samkit CMD: error: ...`` line that is not the "unexpected ... this is a bug" line;
  Python, an exception that is a :class:`napari_sam.errors.SamkitError` or ``ValueError``
  with a message (not a raw ``TypeError``/``IndexError``/``KeyError``...). A case where
  success is acceptable and the call succeeded is clean too; a bad input accepted silently
  is not;
* **traceback**: CLI, ``Traceback`` on stderr; Python, a raw exception of another type;
* **data lost**: an input file (or an existing output, e.g. a previous ``out.tif`` that a
  refused command must leave alone) changed or vanished; Python, an input array mutated.

Each case has a timeout (``--timeout``, 120 s): a timeout is its own outcome. Model runs
are kept short: invalid options are meant to be refused before any work, and where a
case may run the model it runs it on boxes (a few decoder calls) or a small image. The
child processes get ``OMP_NUM_THREADS=1``, and ``NAPARI_SAMKIT_CACHE`` /
``NAPARI_SAMKIT_MODELS`` pointing into the temporary folder (nothing is written to the
user's caches). The default model, LiteMedSAM, loads offline; nothing here uses the network.

Usage::

    python benchmarks/bad_inputs_audit.py [--only SUBSTRING] [--timeout 120] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TIMEOUT = 120.0
#: The line the child process of a Python case prints its result on.
RESULT_MARK = "AUDIT-RESULT "


# ----------------------------------------------------------------------------- fixtures


def coins() -> np.ndarray:
    from skimage import data

    return data.coins()


def write_tif(path: Path, array: np.ndarray) -> None:
    import warnings

    import tifffile

    with warnings.catch_warnings():  # zero-size arrays: tifffile warns that the TIFF is nonconformant
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, array)


def coins_tif(d: Path, name: str = "coins.tif") -> None:
    write_tif(d / name, coins())


def good_boxes(d: Path, name: str = "boxes.csv") -> None:
    (d / name).write_text("x0,y0,x1,y1\n10,10,60,60\n")


def previous_output(d: Path, name: str = "out.tif") -> None:
    """A label image from an earlier run: a refused command must leave it as it is."""
    labels = np.zeros(coins().shape, np.uint8)
    labels[10:60, 10:60] = 1
    write_tif(d / name, labels)


def standard(d: Path) -> None:
    """coins.tif, a good boxes.csv and an existing out.tif."""
    coins_tif(d)
    good_boxes(d)
    previous_output(d)


def with_file(name: str, content: bytes | str | Callable[[Path], None]) -> Callable[[Path], None]:
    """``standard`` plus one more file."""

    def build(d: Path) -> None:
        standard(d)
        if callable(content):
            content(d / name)
        elif isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content)

    return build


def truncated_tif(path: Path) -> None:
    write_tif(path, coins())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def existing_folder(d: Path) -> None:
    standard(d)
    (d / "folder.tif").mkdir()
    (d / "folder.tif" / "keep.txt").write_text("something of the user's\n")


def batch_folder(d: Path) -> None:
    images = d / "batch"
    images.mkdir()
    image = coins()
    write_tif(images / "a.tif", image[:160, :200])
    write_tif(images / "b.tif", image[140:, 180:])
    (images / "bad.tif").write_text("this is not an image\n")
    good_boxes(d)


def batch_outputs(d: Path, _run: CaseResult) -> list[str]:
    problems = []
    for name in ("a_labels.tif", "b_labels.tif"):
        if not (d / "out" / name).is_file():
            problems.append(f"out/{name} not written")
    if (d / "out" / "bad_labels.tif").exists():
        problems.append("out/bad_labels.tif written for the unreadable image")
    return problems


# ----------------------------------------------------------------------------- CLI cases


@dataclass
class CliCase:
    name: str
    tried: str
    args: list[str]  # "{d}" is the case folder (also the working folder)
    expect: tuple[int, ...]
    build: Callable[[Path], None] = standard
    env: dict[str, str] = field(default_factory=dict)
    #: Files (relative to the case folder) that a successful run may replace.
    outputs: tuple[str, ...] = ("out.tif", "out_overlay.png")
    #: A successful or batch run may add files.
    check: Callable[[Path, CaseResult], list[str]] | None = None


def seg(*extra: str, image: str = "coins.tif", output: str = "out.tif") -> list[str]:
    return ["segment", image, "-o", output, *extra]


CLI_CASES: list[CliCase] = [
    CliCase("missing-input", "segment a file that does not exist", seg(image="missing.tif"), (2,)),
    CliCase("empty-file", "segment a 0-byte .tif", seg(image="empty.tif"), (2,), with_file("empty.tif", b"")),
    CliCase("truncated-tiff", "segment a TIFF cut to a third of its bytes", seg(image="cut.tif"), (2,),
            with_file("cut.tif", truncated_tif)),
    CliCase("text-as-tif", "segment a text file named .tif", seg(image="notes.tif"), (2,),
            with_file("notes.tif", "plate 3, well B2: 40x, DAPI\n")),
    CliCase("zero-size", "segment a 0 x 10 image", seg(image="zero.tif"), (2,),
            with_file("zero.tif", lambda p: write_tif(p, np.zeros((0, 10), np.uint8)))),
    CliCase("one-row", "segment a 1 x 300 image (refusing or segmenting are both fine)", seg(image="row.tif"),
            (0, 2), with_file("row.tif", lambda p: write_tif(p, coins()[150:151, :300]))),
    CliCase("strip-10x10000", "segment a 10 x 10000 strip with a box on it (refusing or segmenting are fine)",
            seg("--boxes", "strip.csv", image="strip.tif"), (0, 2), with_file("strip.tif", lambda p: (
                write_tif(p, np.tile(coins()[100:110], (1, 27))[:, :10000]),
                p.with_name("strip.csv").write_text("x0,y0,x1,y1\n100,0,160,9\n")))),
    CliCase("5d-no-axes", "segment a 2x2x2x32x32 stack without --axes", seg(image="stack5d.tif"), (2,),
            with_file("stack5d.tif", lambda p: write_tif(p, np.zeros((2, 2, 2, 32, 32), np.uint8)))),
    CliCase("complex-dtype", "segment a complex64 TIFF", seg(image="complex.tif"), (2,),
            with_file("complex.tif", lambda p: write_tif(p, coins()[:64, :64].astype(np.complex64)))),
    CliCase("out-unwritable", "-o /proc/x.tif", seg("--boxes", "boxes.csv", output="/proc/x.tif"), (2,)),
    CliCase("out-is-folder", "-o folder.tif, an existing folder holding a file",
            seg("--boxes", "boxes.csv", output="folder.tif"), (2,), existing_folder),
    CliCase("out-is-input", "-o equal to the input image (must refuse, input byte-identical)",
            seg("--boxes", "boxes.csv", image="coins.tif", output="coins.tif"), (2,), outputs=()),
    CliCase("overlay-unknown-ext", "--overlay o.xyz", seg("--boxes", "boxes.csv", "--overlay", "o.xyz"), (2,)),
    CliCase("overlay-is-output", "--overlay equal to -o (an existing out.tif)",
            seg("--boxes", "boxes.csv", "--overlay", "out.tif"), (2,), outputs=()),
    CliCase("boxes-binary", "--boxes a binary file", seg("--boxes", "binary.csv"), (2,),
            with_file("binary.csv", bytes(range(256)) * 4)),
    CliCase("boxes-nan", "--boxes CSV with a NaN coordinate", seg("--boxes", "nan.csv"), (2,),
            with_file("nan.csv", "x0,y0,x1,y1\n10,10,60,60\nnan,20,80,80\n")),
    CliCase("boxes-text", "--boxes CSV with a word in a number column", seg("--boxes", "words.csv"), (2,),
            with_file("words.csv", "x0,y0,x1,y1\n10,ten,60,60\n")),
    CliCase("boxes-3-columns", "--boxes CSV with 3 columns", seg("--boxes", "three.csv"), (2,),
            with_file("three.csv", "10,10,60\n20,20,80\n")),
    CliCase("points-per-side-0", "--points-per-side 0", seg("--points-per-side", "0"), (2,)),
    CliCase("crop-n-layers-5", "--crop-n-layers 5", seg("--crop-n-layers", "5"), (2,)),
    CliCase("crop-overlap-negative", "--crop-overlap-ratio -0.5", seg("--crop-overlap-ratio", "-0.5"), (2,)),
    CliCase("crop-downscale-0", "--crop-n-points-downscale-factor 0",
            seg("--crop-n-points-downscale-factor", "0"), (2,)),
    CliCase("box-nms-negative", "--box-nms-thresh -1", seg("--box-nms-thresh", "-1"), (2,)),
    CliCase("pred-iou-nan", "--pred-iou-thresh nan", seg("--pred-iou-thresh", "nan"), (2,)),
    CliCase("mask-threshold-nan", "--mask-threshold nan (with --boxes)",
            seg("--boxes", "boxes.csv", "--mask-threshold", "nan"), (2,)),
    CliCase("precision-env-float16", "NAPARI_SAMKIT_PRECISION=float16", seg("--boxes", "boxes.csv"), (2,),
            env={"NAPARI_SAMKIT_PRECISION": "float16"}),
    CliCase("tile-10", "--tile 10", seg("--tile", "10"), (2,)),
    CliCase("halo-500-tile-512", "--tile 512 --halo 500", seg("--tile", "512", "--halo", "500"), (2,)),
    CliCase("model-unknown", "--model vit_x", seg("--boxes", "boxes.csv", "--model", "vit_x"), (3,)),
    CliCase("model-not-checkpoint", "--model a text file named model.pth",
            seg("--boxes", "boxes.csv", "--model", "model.pth"), (3,),
            with_file("model.pth", "not a checkpoint\n")),
    CliCase("workers-and-dask", "--workers 2 --dask tcp://127.0.0.1:1",
            seg("--boxes", "boxes.csv", "--workers", "2", "--dask", "tcp://127.0.0.1:1"), (2,)),
    CliCase("batch-one-unreadable", "batch folder a.tif, b.tif + unreadable bad.tif, --boxes (exit 6, others "
            "written)", ["segment", "batch", "-o", "out", "--boxes", "boxes.csv"], (6,), batch_folder,
            outputs=(), check=batch_outputs),
    CliCase("sample-unknown", "samkit sample cells", ["sample", "cells", "-o", "cells.png"], (2,)),
    CliCase("download-garbage-url", "samkit download vit_b --url garbage (temporary cache)",
            ["download", "vit_b", "--url", "garbage"], (2, 4)),
    CliCase("embed-missing", "samkit embed on a missing file", ["embed", "missing.tif", "--store", "store"], (2,)),
]


# ----------------------------------------------------------------------------- Python API cases


class Context:
    """What Python cases share inside their child process (loaded on first use)."""

    def __init__(self) -> None:
        self._model = None

    def model(self):
        if self._model is None:
            import napari_sam

            self._model = napari_sam.load_model("lite_medsam")
        return self._model

    def predictor(self, image: np.ndarray | None = None):
        import napari_sam

        predictor = napari_sam.Predictor(self.model())
        predictor.set_image(coins() if image is None else image)
        return predictor


@dataclass
class ApiCase:
    name: str
    tried: str
    #: "error": must raise a clean error; "either": a clean error or a sane result.
    expect: str
    #: ctx -> (inputs to check for mutation, the call). Errors here are setup failures.
    build: Callable[[Context], tuple[dict, Callable[[], object]]]


def _predict(**prompts) -> Callable[[Context], tuple[dict, Callable[[], object]]]:
    def build(ctx: Context):
        predictor = ctx.predictor()
        return dict(prompts), lambda: predictor.predict(**prompts)

    return build


def _set_image(image: Callable[[], np.ndarray]) -> Callable[[Context], tuple[dict, Callable[[], object]]]:
    def build(ctx: Context):
        import napari_sam

        predictor = napari_sam.Predictor(ctx.model())
        array = image()
        return {"image": array}, lambda: predictor.set_image(array)

    return build


def _masks_to_labels(records: Callable[[], list[dict]]) -> Callable[[Context], tuple[dict, Callable[[], object]]]:
    def build(_ctx: Context):
        import napari_sam

        given = records()
        return {"records": given}, lambda: napari_sam.masks_to_labels(given)

    return build


def _disk_labels(shape: tuple[int, int], dtype, value: float) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    labels[40:90, 40:90] = value
    return labels


def _from_labels(labels: Callable[[], np.ndarray]) -> Callable[[Context], tuple[dict, Callable[[], object]]]:
    def build(ctx: Context):
        import napari_sam

        model = ctx.model()
        image = coins()[:160, :160]
        given = labels()
        return {"image": image, "labels": given}, lambda: napari_sam.segment_from_labels(image, given, model)

    return build


def _generate(**parameters) -> Callable[[Context], tuple[dict, Callable[[], object]]]:
    def build(ctx: Context):
        import napari_sam

        model = ctx.model()
        image = coins()[:128, :128]
        return {"image": image}, lambda: napari_sam.generate_masks(image, model, **parameters)

    return build


def _mask(shape, fill=(slice(2, 6), slice(2, 6))) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[fill] = True
    return mask


API_CASES: list[ApiCase] = [
    ApiCase("predict-string-box", "Predictor.predict(box=['x0', 'y0', 'x1', 'y1'])", "error",
            _predict(box=["x0", "y0", "x1", "y1"])),
    ApiCase("predict-odd-coordinates", "Predictor.predict(points=[10, 20, 30], labels=[1])", "error",
            _predict(points=np.array([10.0, 20.0, 30.0]), labels=np.array([1]))),
    ApiCase("predict-no-boxes", "Predictor.predict(box=np.zeros((0, 4)))", "either",
            _predict(box=np.zeros((0, 4)))),
    ApiCase("predict-points-2x3", "Predictor.predict(points=(2, 3) array, labels=[1, 1])", "error",
            _predict(points=np.full((2, 3), 50.0), labels=np.array([1, 1]))),
    ApiCase("predict-points-no-labels", "Predictor.predict(points=[[100, 100]]) without labels", "error",
            _predict(points=np.array([[100.0, 100.0]]))),
    ApiCase("set-image-strip", "Predictor.set_image(10 x 10000 strip of coins)", "either",
            _set_image(lambda: np.tile(coins()[100:110], (1, 27))[:, :10000].copy())),
    ApiCase("set-image-3d", "Predictor.set_image(5 x 64 x 64 stack)", "error",
            _set_image(lambda: np.stack([coins()[:64, :64]] * 5))),
    ApiCase("labels-no-segmentation", "masks_to_labels([{'area': 16, 'predicted_iou': 0.9}])", "error",
            _masks_to_labels(lambda: [{"area": 16, "predicted_iou": 0.9}])),
    ApiCase("labels-3d-mask", "masks_to_labels with a 2 x 8 x 8 'segmentation'", "error",
            _masks_to_labels(lambda: [{"segmentation": _mask((2, 8, 8), (slice(None), slice(2, 6)))}])),
    ApiCase("labels-mixed-shapes", "masks_to_labels with 8 x 8 and 10 x 10 masks", "error",
            _masks_to_labels(lambda: [{"segmentation": _mask((8, 8))}, {"segmentation": _mask((10, 10))}])),
    ApiCase("from-labels-float-ids", "segment_from_labels with float64 labels 0.0/1.0 (whole-number ids)",
            "either", _from_labels(lambda: _disk_labels((160, 160), np.float64, 1.0))),
    ApiCase("from-labels-float-fraction", "segment_from_labels with float32 labels 0/0.5 (a probability map)",
            "error", _from_labels(lambda: _disk_labels((160, 160), np.float32, 0.5))),
    ApiCase("from-labels-other-shape", "segment_from_labels with 100 x 100 labels for a 160 x 160 image", "error",
            _from_labels(lambda: _disk_labels((100, 100), np.uint16, 1))),
    ApiCase("generate-box-nms-negative", "generate_masks(box_nms_thresh=-1)", "error", _generate(box_nms_thresh=-1)),
    ApiCase("generate-pred-iou-nan", "generate_masks(pred_iou_thresh=float('nan'))", "error",
            _generate(pred_iou_thresh=float("nan"))),
    ApiCase("generate-points-per-side-0", "generate_masks(points_per_side=0)", "error",
            _generate(points_per_side=0)),
]


def _feed(h, value) -> None:
    if isinstance(value, np.ndarray):
        h.update(repr((value.shape, value.dtype.str)).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=str):
            h.update(repr(key).encode())
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}]".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


def digest(value) -> str:
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def describe(value) -> str:
    """A short description of what a call returned."""
    if isinstance(value, np.ndarray):
        return f"array {value.shape} {value.dtype}" + (f", {len(np.unique(value)) - 1} ids" if value.ndim == 2 and
                                                        value.dtype.kind in "iu" else "")
    if isinstance(value, list):
        return f"list of {len(value)}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value).__name__ + "(" + ", ".join(
            f"{name} {getattr(np.asarray(v), 'shape', '?')}" for name, v in zip(value._fields, value)) + ")"
    shape = getattr(value, "original_size", None)
    if shape is not None:
        return f"{type(value).__name__} of a {tuple(shape)} image"
    return type(value).__name__


def run_api_case_here(name: str) -> dict:
    """Run one Python case in this process: the JSON-able outcome."""
    case = next(c for c in API_CASES if c.name == name)
    ctx = Context()
    try:
        inputs, call = case.build(ctx)
    except Exception as error:  # noqa: BLE001 - reported as a setup failure of the audit, not of the case
        return {"outcome": "setup-error", "type": type(error).__name__, "message": str(error),
                "traceback": traceback.format_exc()}
    before = {key: digest(value) for key, value in inputs.items()}
    result: dict = {"outcome": "ok"}
    try:
        value = call()
        result["returned"] = describe(value)
    except Exception as error:  # noqa: BLE001 - what the user would get is what we record
        from napari_sam.errors import SamkitError

        frame = traceback.extract_tb(error.__traceback__)[-1]
        where = frame.filename.split("site-packages/")[-1].split("src/")[-1]
        # A ValueError napari-samkit raised on purpose (a ``raise`` line of its own), or one that escaped
        # from inside (numpy, PIL, an unpacking): the latter's message is about their code, not the input.
        deliberate = isinstance(error, SamkitError) or (
            where.startswith("napari_sam/") and (frame.line or "").lstrip().startswith("raise"))
        result = {"outcome": "raised", "type": type(error).__name__,
                  "accepted": isinstance(error, (SamkitError, ValueError)), "deliberate": deliberate,
                  "samkit": isinstance(error, SamkitError), "message": str(error),
                  "where": f"{where}:{frame.lineno}"}
    after = {key: digest(value) for key, value in inputs.items()}
    result["mutated"] = sorted(key for key in inputs if before[key] != after[key])
    return result


# ----------------------------------------------------------------------------- running


@dataclass
class CaseResult:
    surface: str
    name: str
    tried: str
    expected: str
    result: str = ""
    clean: bool = False
    #: Clean by the type rule (a SamkitError or ValueError with a message) but the message is incidental:
    #: a ValueError from numpy, PIL or an unpacking, which speaks of their code, not of the input.
    unclear: bool = False
    traceback: bool = False
    data_lost: bool = False
    timeout: bool = False
    flags: list[str] = field(default_factory=list)
    message: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stderr: str = ""

    @property
    def verdict(self) -> str:
        return ", ".join(self.flags) if self.flags else "OK"


def run_process(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str, str]:
    """(exit status or None on timeout, stdout, stderr); on timeout the process group is killed."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group this call started (Dask workers included)
        except ProcessLookupError:
            pass
        out, err = process.communicate()
        return None, out, err


def child_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NAPARI_SAMKIT_")}
    env.update(NAPARI_SAMKIT_CACHE=str(root / "cache"), NAPARI_SAMKIT_MODELS=str(root / "models"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore", COLUMNS="200")
    env.update(extra or {})
    return env


def samkit_command() -> list[str]:
    script = Path(sys.executable).with_name("samkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "napari_sam.cli"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


ERROR_LINE = re.compile(r"^samkit(?: \w+)?: (?:error|failed): ")


def run_cli_case(case: CliCase, root: Path, timeout: float) -> CaseResult:
    d = root / case.name
    d.mkdir()
    case.build(d)
    before = snapshot(d)
    args = [a.format(d=d) for a in case.args]
    started = time.perf_counter()
    code, _out, err = run_process(samkit_command() + args, d, child_env(d, case.env), timeout)
    expected = "/".join(map(str, case.expect))
    r = CaseResult("CLI", case.name, case.tried, f"exit {expected}", seconds=time.perf_counter() - started,
                   stderr=err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    r.traceback = "Traceback" in err
    bug = "this is a bug" in err
    r.message = (errors[0] if errors else (lines[-1] if lines else "")).strip()
    if code is None:
        r.timeout, r.result = True, "timeout"
        r.flags.append(f"TIMEOUT ({timeout:g} s)")
    else:
        r.result = f"exit {code}"
        if code == 0:
            r.clean = 0 in case.expect
            if not r.clean:
                r.flags.append("SILENTLY ACCEPTED")
        else:
            single = len(errors) == 1 or (case.check is not None and len(errors) >= 1)
            r.clean = not r.traceback and not bug and single
            if r.traceback:
                r.flags.append("TRACEBACK")
            elif bug:
                r.flags.append("BUG MESSAGE (exit 1)")
            elif not errors:
                r.flags.append("UNCLEAR (no error line)")
            elif not single:
                r.flags.append(f"UNCLEAR ({len(errors)} error lines)")
        if code not in case.expect:
            r.flags.append(f"WRONG STATUS (exit {code}, expected {expected})")
    after = snapshot(d)
    lost = []
    for name, sha in before.items():
        if after.get(name) == sha:
            continue
        if code == 0 and 0 in case.expect and name in case.outputs:
            continue  # a successful run replaced its own earlier output (a refused one must not)
        lost.append(name + (" (deleted)" if name not in after else " (changed)"))
    if lost:
        r.data_lost = True
        r.flags.append("DATA LOST: " + ", ".join(lost))
    new = sorted(set(after) - set(before))
    if code not in (0, None) and case.check is None and new:
        r.notes.append("left behind after the failure: " + ", ".join(new))
    if case.check is not None:
        problems = case.check(d, r)
        if problems:
            r.flags.append("CHECK FAILED: " + "; ".join(problems))
    if code == 0 and not case.check:
        r.notes.append("succeeded: " + (lines[-1].strip() if lines else "(no output)"))
    return r


def run_api_case(case: ApiCase, root: Path, timeout: float) -> CaseResult:
    d = root / case.name
    d.mkdir()
    started = time.perf_counter()
    code, out, err = run_process([sys.executable, str(Path(__file__).resolve()), "--api-case", case.name], d,
                                 child_env(d), timeout)
    r = CaseResult("Python", case.name, case.tried, "clean error" if case.expect == "error" else "clean error or ok",
                   seconds=time.perf_counter() - started, stderr=err)
    if code is None:
        r.timeout, r.result = True, "timeout"
        r.flags.append(f"TIMEOUT ({timeout:g} s)")
        return r
    marked = [line[len(RESULT_MARK):] for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if not marked:
        r.result = f"child died (exit {code})"
        r.traceback = "Traceback" in err
        r.message = (err.strip().splitlines() or [""])[-1]
        r.flags.append("AUDIT CHILD FAILED")
        return r
    outcome = json.loads(marked[-1])
    if outcome["outcome"] == "setup-error":
        r.result = f"setup {outcome['type']}"
        r.message = outcome["message"]
        r.flags.append("AUDIT SETUP FAILED")
        r.notes.append(outcome["traceback"])
        return r
    if outcome["outcome"] == "ok":
        r.result = "ok"
        r.message = "returned " + outcome["returned"]
        r.clean = case.expect == "either"
        if not r.clean:
            r.flags.append("SILENTLY ACCEPTED")
    else:
        r.result = outcome["type"]
        r.message = outcome["message"]
        r.traceback = not outcome["accepted"]
        r.clean = outcome["accepted"] and bool(outcome["message"].strip())
        if r.traceback:
            r.flags.append(f"RAW {outcome['type']} (at {outcome['where']})")
        elif not r.clean:
            r.flags.append("UNCLEAR (empty message)")
        elif not outcome["deliberate"]:
            r.unclear = True
            r.flags.append(f"UNCLEAR (incidental {outcome['type']} from {outcome['where']})")
        if outcome["accepted"] and not outcome["samkit"]:
            r.notes.append(f"a plain {outcome['type']}, not a SamkitError (raised at {outcome['where']})")
        if outcome["message"].count("\n"):
            r.notes.append("the message spans several lines")
    if outcome["mutated"]:
        r.data_lost = True
        r.flags.append("DATA LOST: input mutated: " + ", ".join(outcome["mutated"]))
    return r


# ----------------------------------------------------------------------------- report


def cell(text: str, limit: int = 150) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def report(results: list[CaseResult]) -> str:
    rows = ["| # | where | case | tried | result | expected | clean message | traceback | data lost | verdict | "
            "message |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        clean = "unclear" if r.unclear else yes(r.clean)
        rows.append(f"| {i} | {r.surface} | {r.name} | {cell(r.tried, 90)} | {cell(r.result)} | {r.expected} | "
                    f"{clean} | {yes(r.traceback)} | {yes(r.data_lost)} | {cell(r.verdict, 120)} | "
                    f"{cell(r.message)} |")
    n = len(results)
    totals = {
        "tried": n,
        "clean message": sum(r.clean and not r.unclear for r in results),
        "unclear message": sum(r.unclear for r in results),
        "traceback": sum(r.traceback for r in results),
        "data lost": sum(r.data_lost for r in results),
        "wrong exit status": sum(any(f.startswith("WRONG STATUS") for f in r.flags) for r in results),
        "silently accepted": sum("SILENTLY ACCEPTED" in r.flags for r in results),
        "bug message (exit 1)": sum("BUG MESSAGE (exit 1)" in r.flags for r in results),
        "timeout": sum(r.timeout for r in results),
        "OK": sum(not r.flags for r in results),
    }
    out = ["## Bad inputs audit", "", *rows, "", "### Totals", "",
           "(\"unclear\": a ValueError with a message, clean by type, but incidental: raised by numpy, PIL or an "
           "unpacking, not by napari-samkit about the input; clean + unclear is the type-only count.)", "",
           "| " + " | ".join(totals) + " |", "|" + "---|" * len(totals),
           "| " + " | ".join(str(v) for v in totals.values()) + " |", ""]
    defects = [r for r in results if r.flags]
    out += ["### Defects", ""]
    if not defects:
        out.append("None.")
    for r in defects:
        out.append(f"- **{r.surface} {r.name}** ({r.tried}): {r.verdict}; got {r.result}: {cell(r.message, 300)}")
    notes = [r for r in results if r.notes]
    if notes:
        out += ["", "### Notes", ""]
        for r in notes:
            for note in r.notes:
                out.append(f"- {r.surface} {r.name}: {cell(note, 300)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per case (default %(default)g)")
    parser.add_argument("--json", help="also write the raw results (with each case's stderr) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
    parser.add_argument("--api-case", help=argparse.SUPPRESS)  # internal: run one Python case in this process
    args = parser.parse_args(argv)
    if args.api_case:
        print(RESULT_MARK + json.dumps(run_api_case_here(args.api_case)), flush=True)
        return 0
    cli = [c for c in CLI_CASES if not args.only or args.only in c.name]
    api = [c for c in API_CASES if not args.only or args.only in c.name]
    results: list[CaseResult] = []
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="samkit-audit-"))
    if args.keep:
        print(f"case folders in {root}", file=sys.stderr)
    try:
        for i, case in enumerate(cli + api, 1):
            print(f"[{i}/{len(cli) + len(api)}] {case.name} ...", end=" ", file=sys.stderr, flush=True)
            if isinstance(case, CliCase):
                result = run_cli_case(case, root, args.timeout)
            else:
                result = run_api_case(case, root, args.timeout)
            print(f"{result.verdict} ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
            results.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results))
    print(f"\n({len(results)} cases in {time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"verdict": r.verdict} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
