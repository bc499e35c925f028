"""Growth of segment-everything with image size: time, peak memory and F1 at 2-4 sizes.

The image is DSB 2018's ``img2d.tif`` (512 x 512, 125 annotated nuclei, from the
stardist wheel) tiled ``k x k`` times (k = 1, 2, 3: 512, 1024 and 1536 px a side), so
the objects keep their size and their number grows with the area, as in a larger
field of view. Each size runs in a fresh process (peak resident memory ``VmHWM``
is per process) with the default model and parameters on 2 threads.

Usage::

    python benchmarks/automatic_growth.py [--tiles 1,2,3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_one(tiles: int, threads: int) -> dict:
    import numpy as np
    import tifffile
    import torch

    sys.path.insert(0, str(HERE))
    import evaluate_quality as quality

    from napari_sam import load_model
    from napari_sam.automatic import generate_masks, masks_to_labels
    from napari_sam.evaluation import match_instances

    torch.set_num_threads(threads)
    paths = quality.fetch("stardist", quality.default_data_dir())
    image = np.tile(tifffile.imread(paths["stardist/data/images/img2d.tif"]), (tiles, tiles))
    gt = tifffile.imread(paths["stardist/data/images/mask2d.tif"]).astype(np.int64)
    step = int(gt.max()) + 1
    gt = np.block([[gt + (gt > 0) * step * (r * tiles + c) for c in range(tiles)] for r in range(tiles)])
    model = load_model("lite_medsam")
    start = time.perf_counter()
    records = generate_masks(image, model)
    seconds = time.perf_counter() - start
    labels = masks_to_labels(records, shape=gt.shape)
    match = match_instances(gt, labels)
    return {"side": int(image.shape[0]), "objects": int(len(np.unique(gt)) - 1), "found": int(match.n_pred),
            "f1": float(match.f1), "seconds": seconds, "peak_gb": peak_rss_gb()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", default="1,2,3", help="comma-separated tilings k (k x k copies of the image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args.worker, args.threads)))
        return 0
    print(f"{'side':>6s} {'objects':>8s} {'found':>6s} {'F1':>6s} {'seconds':>8s} {'s/object':>9s} {'peak GB':>8s}")
    for tiles in (int(t) for t in args.tiles.split(",")):
        out = subprocess.run([sys.executable, __file__, "--worker", str(tiles), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['side']:6d} {row['objects']:8d} {row['found']:6d} {row['f1']:6.3f} {row['seconds']:8.1f} "
              f"{row['seconds'] / row['objects']:9.3f} {row['peak_gb']:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
