"""Sample data for the File > Open Sample menu (offline: scikit-image only)."""

from __future__ import annotations

import numpy as np


def coins() -> list[tuple]:
    """Greek coins (skimage.data.coins): 303 x 384, uint8, 24 coins to segment."""
    from skimage import data

    return [(data.coins(), {"name": "coins"})]


def blobs_stack() -> list[tuple]:
    """A 3D stack of bright blobs, 24 x 192 x 192 uint8 (synthetic, reproducible)."""
    from skimage.data import binary_blobs
    from skimage.filters import gaussian

    blobs = binary_blobs(length=192, blob_size_fraction=0.12, n_dim=3, volume_fraction=0.15, rng=7)[:24]
    smooth = gaussian(blobs.astype(np.float32), sigma=2.0)
    noisy = smooth + np.random.default_rng(7).normal(0, 0.04, smooth.shape)
    stack = np.clip(noisy * 220 + 20, 0, 255).astype(np.uint8)
    return [(stack, {"name": "blobs stack"})]
