"""Large images: memory and time with size, seams, quality when tiled, and the embedding store.

Data: DSB 2018's ``img2d.tif`` and its 125 annotated nuclei (512 x 512, the stardist
wheel), as in ``evaluate_quality.py``. Every figure runs the default model (LiteMedSAM)
and default parameters on this machine's threads.

Sections (``--only growth,seams,upsampled,discs,store``):

* ``growth``: a W x W field of nuclei at a constant density: the 256 x 256 top-left
  quarter of DSB (29 nuclei) repeated every 512 px on its own dark background (a quarter
  of the area holds nuclei, as on a sparse slide), written as a tiled TIFF. Each size runs
  ``samkit segment FIELD.tif -o labels.tif`` in a fresh process under ``/usr/bin/time -v``:
  wall time, seconds per megapixel and peak resident memory, also net of the input and
  output arrays (uint16 image, uint32 labels); F1 against the repeated ground truth.
* ``seams``: a 3 x 3 mosaic of DSB (1536 x 1536): the tiled result against each source
  image segmented on its own (F1 at IoU 0.5), and the objects split across a seam (an
  object of the per-source result whose pixels go to two or more labels, each with at least
  20 % of them).
* ``upsampled``: DSB upsampled 2x (1024 x 1024, nuclei twice as large, tiled) against DSB
  at its native size: F1 against the (upsampled) ground truth for both, and for the same
  image squeezed into one window (no tiles), as before tiles.
* ``discs``: the hardening issue's memory figure: bright discs on a dark, noisy background,
  16 (a 4 x 4 grid, radius 6 % of the side) or 256 (16 x 16, 1.5 %) of them, at 1024, 2048
  and 4096 px; ``samkit segment`` in a fresh process: peak RSS, time, objects found.
* ``store``: an 8192 x 8192 field: ``samkit embed --store`` of all its tiles, then the time
  to read a tile's embedding from the store against computing it, and the first box preview
  of a fresh :class:`~napari_sam.predictor.Predictor` on the stored image.

Usage::

    python benchmarks/large_images.py [--only growth] [--sizes 2048,4096,8192] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import evaluate_quality as quality  # noqa: E402

SAMKIT = str(Path(sys.executable).with_name("samkit"))


def dsb(data_dir):
    paths = quality.fetch("stardist", data_dir)
    return (tifffile.imread(paths["stardist/data/images/img2d.tif"]),
            tifffile.imread(paths["stardist/data/images/mask2d.tif"]).astype(np.int64))


def field(image: np.ndarray, truth: np.ndarray, side: int, pitch: int = 512, crop: int = 256):
    """Copies of the top-left ``crop`` of an image every ``pitch`` pixels on its darkest level."""
    out = np.full((side, side), np.percentile(image, 1), image.dtype)
    gt = np.zeros((side, side), np.int64)
    piece, labels = image[:crop, :crop], truth[:crop, :crop]
    step = int(labels.max()) + 1
    k = 0
    for y in range(0, side - crop + 1, pitch):
        for x in range(0, side - crop + 1, pitch):
            out[y:y + crop, x:x + crop] = piece
            gt[y:y + crop, x:x + crop] = np.where(labels > 0, labels + k * step, 0)
            k += 1
    return out, gt


def time_v(command: list[str]) -> tuple[float, float, str]:
    """``(wall seconds, peak RSS GB, stderr)`` of a command under /usr/bin/time -v."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 2**20
    return seconds, peak, done.stderr


def growth(args) -> None:
    from napari_sam.evaluation import match_instances

    image, truth = dsb(args.data_dir)
    print("\n## growth: samkit segment on fields of nuclei at one density (a quarter of the area)\n")
    print("| side | megapixels | nuclei | found | F1 | seconds | s/MP | peak RSS GB | net of input + labels GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for side in args.sizes:
            pixels, gt = field(image, truth, side)
            path = Path(folder) / f"field_{side}.tif"
            tifffile.imwrite(path, pixels, tile=(512, 512), compression="zlib")
            out = Path(folder) / f"labels_{side}.tif"
            seconds, peak, _ = time_v([SAMKIT, "segment", str(path), "-o", str(out), "--quiet"])
            labels = tifffile.imread(out)
            match = match_instances(gt, labels)
            mp = side * side / 1e6
            net = peak - side * side * (pixels.itemsize + 4) / 2**30
            print(f"| {side} | {mp:.1f} | {match.n_gt} | {match.n_pred} | {match.f1:.3f} | {seconds:.0f} | "
                  f"{seconds / mp:.1f} | {peak:.2f} | {net:.2f} |", flush=True)


def _split_objects(reference: np.ndarray, labels: np.ndarray, seams: np.ndarray,
                   share: float = 0.2) -> tuple[int, int, int, int]:
    """``(split across a seam, objects across a seam, split elsewhere, objects elsewhere)``: objects of
    ``reference`` whose pixels go to two or more labels, each with ``share`` of them; an object is
    across a seam when it touches a pixel of ``seams`` (the first row / column of a tile core)."""
    counts = [0, 0, 0, 0]
    for k in np.unique(reference[reference > 0]):
        inside = reference == k
        found = labels[inside]
        hits = np.bincount(found[found > 0])
        split = (hits >= share * found.size).sum() >= 2
        across = bool(seams[inside].any())
        counts[0 if across else 2] += int(split)
        counts[1 if across else 3] += 1
    return tuple(counts)


def seams(args) -> None:
    from napari_sam import load_model
    from napari_sam.automatic.tiled import label_everything
    from napari_sam.evaluation import f1_score

    image, truth = dsb(args.data_dir)
    model = load_model("lite_medsam")
    start = time.perf_counter()
    single = label_everything(image, model)
    single_seconds = time.perf_counter() - start
    n = 3
    mosaic = np.tile(image, (n, n))
    start = time.perf_counter()
    tiled = label_everything(mosaic, model)
    seconds = time.perf_counter() - start
    step = int(single.max()) + 1
    reference = np.block([[np.where(single > 0, single + step * (r * n + c), 0) for c in range(n)] for r in range(n)])
    gt = np.block([[np.where(truth > 0, truth + 1000 * (r * n + c), 0) for c in range(n)] for r in range(n)])
    print(f"\n## seams: a {n} x {n} mosaic of DSB ({mosaic.shape[1]} x {mosaic.shape[0]}), default tiles\n")
    print(f"- tiled vs each source segmented alone: F1 {f1_score(reference, tiled):.3f}")
    from napari_sam.tiles import TileGrid

    seam_mask = np.zeros(mosaic.shape, bool)
    for tile in TileGrid.for_model(mosaic.shape, model.spec):
        x0, y0 = tile.core[:2]
        seam_mask[y0, :] |= y0 > 0
        seam_mask[:, x0] |= x0 > 0
    split_seam, across, split_else, elsewhere = _split_objects(reference, tiled, seam_mask)
    print(f"- objects of the per-source result split in two or more labels: {split_seam} of the {across} that "
          f"cross a tile seam, {split_else} of the {elsewhere} elsewhere")
    print(f"- F1 against the ground truth: tiled {f1_score(gt, tiled):.3f}, per source {f1_score(truth, single):.3f}")
    print(f"- seconds: tiled {seconds:.1f} ({seconds / (mosaic.size / 1e6):.1f} s/MP), one source "
          f"{single_seconds:.1f} ({single_seconds / (image.size / 1e6):.1f} s/MP)", flush=True)


def upsampled(args) -> None:
    from skimage.transform import resize

    from napari_sam import load_model
    from napari_sam.automatic.tiled import label_everything
    from napari_sam.evaluation import f1_score

    image, truth = dsb(args.data_dir)
    model = load_model("lite_medsam")
    big = resize(image, (1024, 1024), order=1, preserve_range=True, anti_aliasing=False).astype(image.dtype)
    big_truth = np.kron(truth, np.ones((2, 2), np.int64))
    print("\n## upsampled: DSB 2x (1024 x 1024) against native 512 x 512\n")
    rows = []
    for name, pixels, gt, tile in (("native 512", image, truth, None), ("2x, tiled (default)", big, big_truth, None),
                                   ("2x, one window (no tiles)", big, big_truth, 2048)):
        start = time.perf_counter()
        labels = label_everything(pixels, model, tile=tile)
        rows.append((name, f1_score(gt, labels), time.perf_counter() - start))
        print(f"- {name}: F1 {rows[-1][1]:.3f} in {rows[-1][2]:.1f} s", flush=True)


def discs_image(side: int, per_row: int, seed: int = 0) -> np.ndarray:
    """``per_row**2`` bright discs on a dark noisy background (uint8)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    image = rng.normal(30, 6, (side, side)).clip(0, 255)
    radius = side * (0.06 if per_row <= 4 else 0.015)
    for i in range(per_row):
        for j in range(per_row):
            centre = ((i + 0.5) * side / per_row, (j + 0.5) * side / per_row)
            rr, cc = disk(centre, radius, shape=image.shape)
            image[rr, cc] += 150
    return image.clip(0, 255).astype(np.uint8)


def discs(args) -> None:
    print("\n## discs: peak memory with objects x pixels (samkit segment, one process per run)\n")
    print("| side | discs | found | seconds | peak RSS GB |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for side in args.disc_sizes:
            for per_row in (4, 16):
                path = Path(folder) / f"discs_{side}_{per_row}.tif"
                tifffile.imwrite(path, discs_image(side, per_row))
                out = Path(folder) / f"labels_{side}_{per_row}.tif"
                seconds, peak, _ = time_v([SAMKIT, "segment", str(path), "-o", str(out), "--quiet"])
                found = len(np.unique(tifffile.imread(out))) - 1
                print(f"| {side} | {per_row ** 2} | {found} | {seconds:.0f} | {peak:.2f} |", flush=True)


def store(args) -> None:
    from napari_sam import load_model
    from napari_sam.embed import embed_one
    from napari_sam.embedding import EmbeddingKey
    from napari_sam.inference import embed_image
    from napari_sam.io import open_image
    from napari_sam.predictor import Predictor
    from napari_sam.source import PlaneSource
    from napari_sam.store import EmbeddingStore
    from napari_sam.tiles import TileGrid

    image, truth = dsb(args.data_dir)
    side = 8192
    pixels, _ = field(image, truth, side)
    print(f"\n## store: an {side} x {side} field\n")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "field.tif"
        tifffile.imwrite(path, pixels, tile=(512, 512), compression="zlib")
        store_path = Path(folder) / "store"
        seconds, peak, err = time_v([SAMKIT, "embed", str(path), "--store", str(store_path)])
        summary = next(line for line in err.splitlines() if "embedding(s) in" in line)
        print(f"- samkit embed: {seconds:.0f} s, peak RSS {peak:.2f} GB; {summary}")
        model = load_model("lite_medsam")
        source = PlaneSource(open_image(path))
        grid = TileGrid.for_model(source.shape, model.spec)
        window = grid[len(grid) // 2].window
        rgb = source.rgb(window)
        start = time.perf_counter()
        embed_image(model, rgb)
        compute = time.perf_counter() - start
        key = EmbeddingKey.create(source.signature, model, None, view=source.view)
        opened = EmbeddingStore.open(store_path, key)
        start = time.perf_counter()
        found = opened.get(key.at(window=window), memory=False)
        load = time.perf_counter() - start
        print(f"- a tile's embedding: computed {compute * 1000:.0f} ms, read from the store {load * 1000:.1f} ms "
              f"({compute / load:.0f}x); found: {found is not None}")
        start = time.perf_counter()
        predictor = Predictor(model)
        predictor.store = EmbeddingStore.open(store_path, key)
        whole = embed_one(model, source, key=key, store=predictor.store)
        predictor.set_embedding(whole, image=source)
        x0, y0 = window[:2]
        box = np.array([x0 + 100, y0 + 100, x0 + 300, y0 + 300])
        predictor.predict_regions(box=box)
        print(f"- a new predictor on the stored image, first box preview: {time.perf_counter() - start:.2f} s "
              f"(image signature, stored overview, the box's window read or computed)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="growth,seams,upsampled,discs,store")
    parser.add_argument("--sizes", default="2048,4096,8192")
    parser.add_argument("--disc-sizes", default="1024,2048,4096")
    parser.add_argument("--data-dir", default=quality.default_data_dir())
    args = parser.parse_args()
    args.sizes = [int(v) for v in args.sizes.split(",")]
    args.disc_sizes = [int(v) for v in args.disc_sizes.split(",")]
    print(f"# large images, {os.cpu_count()} CPU(s), torch threads default")
    for section in args.only.split(","):
        sections = {"growth": growth, "seams": seams, "upsampled": upsampled, "discs": discs, "store": store}
        sections[section.strip()](args)


if __name__ == "__main__":
    main()
