"""Loading a stored embedding vs computing it (issue 12 target: at least 20x faster).

Embeds ``skimage.data.coins()`` once with the image encoder (after a warm-up call)
into an :class:`~napari_sam.store.EmbeddingStore`, then loads it back from disk
with a new store object each time (no memory cache: the zarr read, the checksum and
the conversion to a tensor are all counted). Prints the median of each and the ratio::

    python benchmarks/store_speed.py [--model lite_medsam] [--precision float32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--precision", default=None, help="image encoder precision (default: the configured one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    from skimage import data

    from napari_sam import load_model
    from napari_sam.embed import compute_embeddings
    from napari_sam.inference import embed_image
    from napari_sam.preprocess import as_rgb
    from napari_sam.store import EmbeddingStore

    model = load_model(args.model)
    image = data.coins()
    rgb = as_rgb(image)
    embed_image(model, rgb, precision=args.precision)  # warm-up
    computes = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        embed_image(model, rgb, precision=args.precision)
        computes.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder:
        (stored,) = compute_embeddings(model, image, store=EmbeddingStore(f"{folder}/coins.zarr"),
                                       precision=args.precision)
        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = EmbeddingStore(f"{folder}/coins.zarr").get(stored.key)
            loads.append(time.perf_counter() - start)
            assert loaded is not None and torch.equal(loaded.features, stored.features)

    compute, load = statistics.median(computes), statistics.median(loads)
    print(f"model {model.spec.name}, precision {stored.key.precision}, image {image.shape}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"compute embedding: median {compute * 1000:8.1f} ms over {args.repeats}")
    print(f"load from store:   median {load * 1000:8.1f} ms over {args.repeats} (new store object each time)")
    print(f"load is {compute / load:.0f}x faster (target >= 20x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
