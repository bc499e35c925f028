"""Encoder windows for box prompts: zoom small objects, share windows between neighbours.

The encoder input is a square of side ``S = model.spec.image_size`` (256 for
LiteMedSAM): a 20-pixel nucleus in a 1024-pixel image is 5 pixels at the input,
too small to segment well. :func:`plan_windows` gives each box a window of the
image in which it has a good size at the input, and lets boxes share windows so
the encoder runs far fewer times than there are objects:

* Zoom. A box whose longest side would be smaller than ``object_size / sqrt(2)``
  (default ``object_size = S / 4``) at the input of the whole image gets a square
  window of side ``L`` in which it becomes between ``object_size / sqrt(2)`` and
  ``object_size`` pixels. ``L`` takes the values ``(S / max_upscale) * sqrt(2)**k``
  (one ladder for all images), so boxes of similar size share a level.
* Sharing. Within one level, windows are chosen from a grid of candidate
  positions (stride ``L / 4``, the last one flush with the image edge) by a
  greedy set cover: repeatedly take the candidate that fully contains (with a
  margin of ``margin`` times the box side) the most boxes not yet assigned. Each
  box then goes to the chosen window where it lies most central.

* Budget. Each window is one encoder run (about 0.6 s for LiteMedSAM on two CPU
  cores), so the zoom is what makes images of many small objects slow. With
  ``max_windows``, when the plan needs more windows than that, the target size
  shrinks by ``sqrt(2)`` (less zoom: larger windows, each holding more objects)
  until the plan fits, down to the whole image. The automatic mode's budget grows
  with the area segmented (:func:`window_budget`), so that a tile of a large image
  gets the zoom an image of its size gets.

Measured on LiteMedSAM with ground-truth boxes of fluorescent nuclei: objects of
about 64 pixels at the input (a window four times the object) segment best;
43 pixels lose about 0.05 mean IoU, 85 pixels (less context) about 0.01.
"""

from __future__ import annotations

import numpy as np

from . import amg

#: The automatic mode's ``max_windows`` is a budget per this many pixels (at least ``max_windows``
#: per image): a 576 x 576 window of DSB 2018 nuclei got F1 0.846 with 48 windows and 0.931
#: unbounded, against 0.914 for the 512 x 512 image with 48.
BUDGET_AREA = 512 * 512


def window_budget(max_windows: int, area: float) -> int:
    """Windows for ``area`` pixels at ``max_windows`` per :data:`BUDGET_AREA` (at least ``max_windows``;
    0: no limit)."""
    if not max_windows:
        return 0
    return int(np.ceil(max_windows * max(1.0, area / BUDGET_AREA)))


def _grid_starts(length: int, side: int, stride: int) -> np.ndarray:
    """Window starts along one axis: every ``stride``, the last flush with the edge."""
    if side >= length:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - side, stride, dtype=np.int64)
    return np.append(starts, length - side)


def _cover(boxes: np.ndarray, side: int, shape: tuple[int, int], margin: float) -> tuple[list, np.ndarray]:
    """Greedy set cover of ``boxes`` by square windows of ``side`` (see module docstring).

    Returns:
        ``(windows, owner)``: XYXY int windows and, for each box, its window index.
    """
    h, w = shape
    sx, sy = min(side, w), min(side, h)
    stride = max(1, side // 4)
    xs, ys = _grid_starts(w, sx, stride), _grid_starts(h, sy, stride)
    pad = margin * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    need0 = np.maximum(boxes[:, :2] - pad[:, None], 0)  # window must start at or before this
    need1 = np.minimum(boxes[:, 2:] + pad[:, None], [w, h])  # and end at or after this
    # Along each axis, the candidate starts that contain the box form one run.
    pairs_c, pairs_b = [], []
    xs_lo = np.searchsorted(xs, need1[:, 0] - sx, side="left")
    xs_hi = np.searchsorted(xs, need0[:, 0], side="right")
    ys_lo = np.searchsorted(ys, need1[:, 1] - sy, side="left")
    ys_hi = np.searchsorted(ys, need0[:, 1], side="right")
    for i in range(boxes.shape[0]):
        cx = np.arange(xs_lo[i], max(xs_hi[i], xs_lo[i] + 1))
        cy = np.arange(ys_lo[i], max(ys_hi[i], ys_lo[i] + 1))
        cx = cx[cx < xs.size]
        cy = cy[cy < ys.size]
        if cx.size == 0 or cy.size == 0:  # cannot happen for boxes smaller than the window
            cx = np.array([min(xs_lo[i], xs.size - 1)])
            cy = np.array([min(ys_lo[i], ys.size - 1)])
        cand = (cy[:, None] * xs.size + cx[None, :]).ravel()
        pairs_c.append(cand)
        pairs_b.append(np.full(cand.size, i))
    cand_of = np.concatenate(pairs_c)
    box_of = np.concatenate(pairs_b)
    n_cand = xs.size * ys.size
    counts = np.bincount(cand_of, minlength=n_cand)
    by_cand = np.argsort(cand_of, kind="stable")
    cand_start = np.searchsorted(cand_of[by_cand], np.arange(n_cand + 1))
    owner = np.full(boxes.shape[0], -1, dtype=np.int64)
    windows = []
    while (owner < 0).any():
        best = int(np.argmax(counts))
        members = box_of[by_cand[cand_start[best] : cand_start[best + 1]]]
        members = members[owner[members] < 0]
        owner[members] = len(windows)
        x0, y0 = int(xs[best % xs.size]), int(ys[best // xs.size])
        windows.append((x0, y0, x0 + sx, y0 + sy))
        # Those boxes no longer count for any candidate that contained them.
        np.subtract.at(counts, cand_of[np.isin(box_of, members)], 1)
    # Each box then goes to the chosen window where it lies most central.
    chosen = np.array(windows, dtype=np.float64)
    for part in amg.batch_slices(boxes.shape[0], max(1, 2**22 // len(windows))):
        b = boxes[part, None, :]
        clearance = np.minimum(b[..., :2] - chosen[None, :, :2], chosen[None, :, 2:] - b[..., 2:]).min(-1)
        owner[part] = clearance.argmax(1)
    return windows, owner


def plan_windows(
    boxes: np.ndarray,
    shape: tuple[int, int],
    image_size: int,
    *,
    zoom: bool = True,
    object_size: float | None = None,
    max_upscale: float = 8.0,
    margin: float = 0.25,
    max_windows: int | None = None,
) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """Choose encoder windows for ``boxes`` (see the module docstring).

    Args:
        boxes: ``N x 4`` checked boxes. shape: ``(H, W)`` of the image.
        image_size: side ``S`` of the encoder input.
        zoom: False to use the whole image for every box.
        object_size: target longest box side at the encoder input (default ``S / 4``).
        max_upscale: largest magnification of a window.
        margin: context each side of a box inside its window, in box sides.
        max_windows: at most this many windows (None or 0: no limit): the zoom is
            lowered until the plan fits (see the module docstring).

    Returns:
        ``(windows, owner)``: XYXY windows (the whole image first when used) and the
        window index of each box.
    """
    h, w = shape
    n = boxes.shape[0]
    whole = (0, 0, w, h)
    if not zoom:
        return [whole], np.zeros(n, dtype=np.int64)
    target = float(object_size) if object_size else image_size / 4.0
    while True:
        windows, owner = _plan_at(boxes, shape, image_size, target, max_upscale, margin)
        if not max_windows or len(windows) <= max_windows:
            return windows, owner
        if target < 1.0:  # (degenerate boxes): the whole image
            return [whole], np.zeros(n, dtype=np.int64)
        target /= np.sqrt(2.0)


def _plan_at(
    boxes: np.ndarray, shape: tuple[int, int], image_size: int, target: float, max_upscale: float, margin: float
) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """:func:`plan_windows` for one target object size at the encoder input."""
    h, w = shape
    n = boxes.shape[0]
    whole = (0, 0, w, h)
    box_side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    full_scale = image_size / max(h, w)
    min_window = image_size / max_upscale
    # Window side at which each box has the target size, rounded up to a ladder
    # of sides min_window * sqrt(2)**k shared by all images.
    wanted = np.maximum(box_side * image_size / target, min_window)
    level = np.ceil(np.log2(wanted / min_window) * 2.0 - 1e-9)
    sides = np.ceil(min_window * 2.0 ** (level / 2.0)).astype(np.int64)  # box is target/sqrt(2) .. target
    use_whole = (box_side * full_scale >= target / np.sqrt(2.0)) | (sides >= max(h, w))
    windows: list[tuple[int, int, int, int]] = []
    owner = np.full(n, -1, dtype=np.int64)
    if use_whole.any():
        windows.append(whole)
        owner[use_whole] = 0
    for side in np.unique(sides[~use_whole]):
        members = np.flatnonzero(~use_whole & (sides == side))
        level_windows, level_owner = _cover(boxes[members], int(side), shape, margin)
        owner[members] = level_owner + len(windows)
        windows.extend(level_windows)
    return windows, owner
