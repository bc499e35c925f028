"""A threshold-derived reference segmentation of ``skimage.data.coins()``.

Coins are bright on a darker, uneven background: a local (background-subtracted)
Otsu threshold, hole filling and an opening give one clean region per coin for the
well-separated coins. Used as ground truth by tests of box prompts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import data, filters, measure, morphology


def coin_masks(min_area: int = 900) -> tuple[np.ndarray, list]:
    """Return ``(image, regions)``: regions are skimage regionprops of the reference coins."""
    image = data.coins()
    smooth = filters.gaussian(image, sigma=1.5, preserve_range=True)
    background = ndi.uniform_filter(smooth, size=101)
    foreground = smooth - background > filters.threshold_otsu(smooth - background)
    foreground = ndi.binary_fill_holes(ndi.binary_closing(foreground, morphology.disk(3)))
    foreground = ndi.binary_opening(foreground, morphology.disk(4))
    labels = measure.label(foreground)
    regions = [
        r for r in measure.regionprops(labels)
        if r.area >= min_area and r.solidity > 0.93 and r.eccentricity < 0.7
    ]
    return image, regions


def box_xyxy(region, margin: int = 2) -> list[float]:
    """(x0, y0, x1, y1) of a region's bounding box, enlarged by ``margin`` pixels."""
    r0, c0, r1, c1 = region.bbox
    return [c0 - margin, r0 - margin, c1 - 1 + margin, r1 - 1 + margin]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
