"""Small pure functions of the point-grid "segment everything" algorithm.

The algorithm is the one of Meta's ``SamAutomaticMaskGenerator`` (its
``utils/amg.py`` defines the same steps); this is our own implementation, built to
run on whole batches of tensors: no RLE, no Python loop over masks, no
torchvision or OpenCV. Every function here gives the same numbers as its official
twin (the tests compare them) and can be tested alone.

Conventions: boxes are ``(x0, y0, x1, y1)`` ("XYXY", inclusive pixel indices for
boxes around masks) or ``(x, y, w, h)`` ("XYWH"); masks are ``... x H x W``; points
are ``(x, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import product

import numpy as np
import torch

from ..errors import Cancelled, SamkitError  # noqa: F401 - Cancelled is re-exported here

# --------------------------------------------------------------------- point grids


def build_point_grid(n_per_side: int) -> np.ndarray:
    """A regular grid of ``n x n`` points in the unit square, cell centres.

    Returns:
        ``n**2 x 2`` float64 ``(x, y)`` in [0, 1]; x varies fastest (row-major).
    """
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1.0 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side, indexing="xy")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer: layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


# ---------------------------------------------------------------------- crop boxes


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes of every layer: the whole image, then ``(2**i)**2`` overlapping crops in layer ``i``.

    Args:
        im_size: ``(H, W)`` of the image.
        n_layers: number of crop layers beyond the whole image.
        overlap_ratio: overlap of neighbouring crops of layer 1 as a fraction of
            the image's short side (halved in each further layer).

    Returns:
        ``(crop_boxes, layer_indices)``: XYXY integer boxes (x major, y minor
        within a layer, as the official code) and the layer of each box.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes = [[0, 0, im_w, im_h]]
    layers = [0]
    for layer in range(1, n_layers + 1):
        n_crops = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = int(math.ceil((overlap * (n_crops - 1) + im_w) / n_crops))
        crop_h = int(math.ceil((overlap * (n_crops - 1) + im_h) / n_crops))
        starts_x = [int((crop_w - overlap) * i) for i in range(n_crops)]
        starts_y = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for x0, y0 in product(starts_x, starts_y):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


# ----------------------------------------------------------------- mask statistics


def calculate_stability_score(logits: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU between the masks ``logits > t + offset`` and ``logits > t - offset``.

    The first mask lies inside the second, so the IoU is a ratio of pixel counts.
    Counts are integers (exact), the ratio float32, as the official code.

    Args:
        logits: ``... x H x W`` mask logits.

    Returns:
        ``...`` float32 stability scores (NaN where both masks are empty).
    """
    high = (logits > (mask_threshold + threshold_offset)).sum((-1, -2), dtype=torch.int32)
    low = (logits > (mask_threshold - threshold_offset)).sum((-1, -2), dtype=torch.int32)
    return high / low


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (inclusive pixel indices) around masks.

    Args:
        masks: ``... x H x W`` bool.

    Returns:
        ``... x 4`` int64 ``(x0, y0, x1, y1)``; ``(0, 0, 0, 0)`` for an empty mask.
    """
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(-1)  # ... x H
    cols = masks.any(-2)  # ... x W
    row_index = torch.arange(h, device=masks.device)
    col_index = torch.arange(w, device=masks.device)
    top = torch.where(rows, row_index, h).amin(-1)
    bottom = torch.where(rows, row_index, -1).amax(-1)
    left = torch.where(cols, col_index, w).amin(-1)
    right = torch.where(cols, col_index, -1).amax(-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(-1)
    return boxes.masked_fill(empty[..., None], 0)


def box_xyxy_to_xywh(boxes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """``... x 4`` XYXY -> XYWH (a new array of the same type and dtype)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas ``N`` of ``N x 4`` XYXY boxes, ``(x1 - x0) * (y1 - y0)``, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ---------------------------------------------------------------------------- NMS


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, the semantics of ``torchvision.ops.nms``.

    Boxes are visited by score, descending (a stable sort: equal scores keep their
    input order); a box is kept unless a kept box overlaps it with IoU
    ``> iou_threshold``. IoU is computed in float64 on the vector of remaining
    boxes for each kept box, so memory is ``O(N)`` and time ``O(kept x N)``.

    Args:
        boxes: ``N x 4`` XYXY. scores: ``N``.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True).numpy()
    b = boxes.detach().cpu().double().numpy()[order]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, n)
        iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0.0, None)
        ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0.0, None)
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[i] + area[rest] - inter)
        suppressed[rest] |= iou > iou_threshold
    return torch.from_numpy(order[np.asarray(keep, dtype=np.int64)])


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each category ``idxs``, as ``torchvision.ops.batched_nms``.

    Boxes of different categories are moved apart by ``idx * (max coordinate + 1)``
    so they never overlap, then one :func:`nms` runs.

    Returns:
        int64 indices of the kept boxes, by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    boxes = boxes.double()
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ------------------------------------------------------------------ crop geometry


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> torch.Tensor:
    """Which boxes (crop frame) come within ``atol`` px of an inner edge of the crop.

    An edge of the crop that is also an edge of the image does not count.

    Args:
        boxes: ``N x 4`` XYXY in the crop frame.
        crop_box, orig_box: XYXY of the crop and of the whole image.

    Returns:
        ``N`` bool.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = (boxes - crop).abs() <= atol
    near_image = (boxes - image).abs() <= atol
    return (near_crop & ~near_image).any(dim=-1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """``... x 4`` XYXY boxes from the crop frame to the image frame."""
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: Sequence[int]) -> torch.Tensor:
    """``... x 2`` (x, y) points from the crop frame to the image frame."""
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    return points + torch.tensor([x0, y0], device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """``... x h x w`` masks of a crop -> ``... x H x W`` in the image (zero outside the crop)."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = (x0, orig_w - x1, y0, orig_h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


# ---------------------------------------------------------- small-region removal

#: 8-connectivity in a plane (as OpenCV's ``connectedComponentsWithStats(..., 8)``).
_EIGHT = np.ones((3, 3), dtype=bool)


def _label_planes(stack: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of each ``H x W`` plane of ``N x H x W`` (never across planes)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = _EIGHT
    return ndimage.label(stack, structure=structure)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes (``mode="holes"``) or drop small islands (``mode="islands"``).

    Regions are 8-connected; a region is small if its area is ``< area_thresh``.
    In ``"holes"`` mode the regions are those of the inverted mask, and small ones
    are filled. In ``"islands"`` mode small regions are removed, but if every
    region is small the largest one is kept (the first in raster order of equal
    largest ones). With no small region the mask is returned unchanged (same
    object).

    Args:
        mask: ``H x W`` bool.

    Returns:
        ``(mask, changed)``: the new ``H x W`` bool mask and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise SamkitError(f"mode must be 'holes' or 'islands', got {mode!r}.")
    masks, changed = remove_small_regions_batch(np.asarray(mask, dtype=bool)[None], area_thresh, mode)
    if not changed[0]:
        return mask, False
    return masks[0], True


def remove_small_regions_batch(masks: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`remove_small_regions` for a stack ``N x H x W`` at once (one labelling pass).

    Returns:
        ``(masks, changed)``: the new ``N x H x W`` bool masks (planes that did not
        change are equal to the input) and ``N`` bool.
    """
    if mode not in ("holes", "islands"):
        raise SamkitError(f"mode must be 'holes' or 'islands', got {mode!r}.")
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    if n == 0:
        return masks.copy(), np.zeros(0, dtype=bool)
    holes = mode == "holes"
    labels, n_labels = _label_planes(~masks if holes else masks)
    label_ids = np.arange(n_labels + 1)
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)
    sizes[0] = 0
    # Labels are numbered in raster order over the stack: each plane holds a range.
    plane_max = np.maximum.accumulate(labels.reshape(n, -1).max(axis=1))
    plane_of = np.searchsorted(plane_max, label_ids, side="left")
    small = (sizes < area_thresh) & (label_ids > 0)
    changed = np.zeros(n, dtype=bool)
    changed[plane_of[small]] = True
    if holes:
        keep_label = small  # filled holes; label 0 is the mask itself
        out = masks | keep_label[labels]
    else:
        keep_label = ~small
        keep_label[0] = False
        has_big = np.zeros(n, dtype=bool)
        has_big[plane_of[keep_label]] = True
        lonely = changed & ~has_big
        if lonely.any():
            # Every island of the plane is small: keep its largest (lowest label on ties).
            ids = label_ids[1:]
            order = np.lexsort((ids, -sizes[ids], plane_of[ids]))
            ranked = ids[order]
            first = np.ones(ranked.size, dtype=bool)
            first[1:] = plane_of[ranked[1:]] != plane_of[ranked[:-1]]
            largest = ranked[first]
            keep_label[largest[lonely[plane_of[largest]]]] = True
        out = keep_label[labels]
    out[~changed] = masks[~changed]
    return out, changed


# ------------------------------------------------------------------------ records


class MaskRecords:
    """Columns of per-mask data (tensors or arrays with a leading ``N`` axis).

    A tiny replacement for the official ``MaskData``: ``filter`` keeps rows by a
    bool mask or an index tensor (in that order), ``cat`` appends rows.
    """

    def __init__(self, **columns: torch.Tensor | np.ndarray) -> None:
        self._columns: dict[str, torch.Tensor | np.ndarray] = dict(columns)

    def __getitem__(self, key: str) -> torch.Tensor | np.ndarray:
        return self._columns[key]

    def __setitem__(self, key: str, value: torch.Tensor | np.ndarray) -> None:
        self._columns[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        for value in self._columns.values():
            return int(value.shape[0])
        return 0

    def keys(self):
        return self._columns.keys()

    def filter(self, keep: torch.Tensor | np.ndarray) -> MaskRecords:
        """Keep rows in place; ``keep`` is ``N`` bool or int indices. Returns self."""
        keep_t = torch.as_tensor(keep)
        keep_np = keep_t.cpu().numpy()
        for key, value in self._columns.items():
            if isinstance(value, torch.Tensor):
                self._columns[key] = value[keep_t.to(value.device)]
            else:
                self._columns[key] = value[keep_np]
        return self

    def cat(self, other: MaskRecords) -> MaskRecords:
        """Append the rows of ``other`` (same columns, or self empty). Returns self."""
        if not self._columns:
            self._columns = dict(other._columns)
            return self
        for key, value in other._columns.items():
            mine = self._columns[key]
            if isinstance(mine, torch.Tensor):
                self._columns[key] = torch.cat([mine, value.to(mine.device)], dim=0)
            else:
                self._columns[key] = np.concatenate([mine, value], axis=0)
        return self

    @staticmethod
    def concat(parts: Sequence[MaskRecords]) -> MaskRecords:
        """All rows of ``parts``, in order, in one concatenation per column."""
        parts = [p for p in parts if len(p.keys())]
        if not parts:
            return MaskRecords()
        out = {}
        for key, first in parts[0]._columns.items():
            values = [p._columns[key] for p in parts]
            out[key] = torch.cat(values, 0) if isinstance(first, torch.Tensor) else np.concatenate(values, 0)
        return MaskRecords(**out)
