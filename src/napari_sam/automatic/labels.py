"""Mask records -> one label image, resolving overlaps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import SamkitError

#: Bytes of mask planes combined at once.
_CHUNK_BYTES = 64 * 2**20


def masks_to_labels(records: Sequence[dict], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Paint mask records into a label image; where masks overlap, smaller masks win.

    Label ``k + 1`` is ``records[k]`` (0 is background), so a label maps back to
    its record. Overlaps are resolved by area: a pixel covered by several masks
    takes the label of the **smallest** of them (the one with the fewest pixels),
    so parts nested in a whole object (a nucleus in a cell, a cell in a colony)
    stay visible and the larger mask keeps the pixels no smaller mask claims.
    Among masks of equal area, the one with the higher quality
    ``predicted_iou * stability_score`` wins, then the earlier record. A record
    whose pixels are all claimed by smaller masks does not appear (its label is
    unused). The masks are combined with tensor ops, a chunk of masks at a time.

    Args:
        records: dicts with ``"segmentation"`` (``H x W`` bool) and optionally
            ``"area"``, ``"predicted_iou"``, ``"stability_score"``.
        shape: ``(H, W)``; needed only when ``records`` is empty.

    Returns:
        ``H x W`` uint32 labels.
    """
    records = list(records)
    if not records:
        if shape is None:
            raise SamkitError("No mask records and no shape: pass shape=(H, W) to masks_to_labels.")
        return np.zeros(tuple(shape), dtype=np.uint32)
    found = _mask_shape(records)
    if shape is not None and tuple(shape) != found:
        raise SamkitError(f"The masks are {found[0]} x {found[1]} but shape={tuple(shape)} was given.")
    n = len(records)
    areas = np.array(
        [r["area"] if "area" in r else int(np.count_nonzero(r["segmentation"])) for r in records], dtype=np.int64
    )
    quality = np.array(
        [float(r.get("predicted_iou", 1.0)) * float(r.get("stability_score", 1.0)) for r in records]
    )
    # Priority: larger area first, then lower quality, then later record; the last one wins.
    order = np.lexsort((-np.arange(n), quality, -areas))
    priority = np.empty(n, dtype=np.int64)
    priority[order] = np.arange(1, n + 1)

    h, w = found
    best = torch.zeros((h, w), dtype=torch.int64)
    per_chunk = max(1, _CHUNK_BYTES // (9 * h * w))
    for start in range(0, n, per_chunk):
        part = records[start : start + per_chunk]
        stack = torch.from_numpy(np.stack([np.asarray(r["segmentation"], dtype=bool) for r in part]))
        ranks = torch.from_numpy(priority[start : start + len(part)])
        painted = torch.where(stack, ranks[:, None, None], 0).amax(dim=0)
        torch.maximum(best, painted, out=best)
    # priority -> record index + 1; 0 stays background.
    to_label = np.zeros(n + 1, dtype=np.uint32)
    to_label[priority] = np.arange(1, n + 1, dtype=np.uint32)
    return to_label[best.numpy()]


def _mask_shape(records: Sequence[dict]) -> tuple[int, int]:
    """The ``(H, W)`` every record's mask has.

    Raises:
        SamkitError: a record that is not a dict with an ``H x W`` ``"segmentation"``, or masks
            of different shapes.
    """
    shapes = set()
    for k, record in enumerate(records):
        if not isinstance(record, dict) or "segmentation" not in record:
            raise SamkitError(f"Record {k} has no 'segmentation': masks_to_labels takes the dicts of "
                              "generate_masks (an H x W bool mask under 'segmentation').")
        mask_shape = np.shape(record["segmentation"])
        if len(mask_shape) != 2:
            raise SamkitError(f"Record {k}'s segmentation has shape {mask_shape}: each mask is one H x W plane "
                              "(run-length encoded masks: decode them first).")
        shapes.add(tuple(int(v) for v in mask_shape))
    if len(shapes) > 1:
        raise SamkitError(f"The masks have different shapes ({', '.join(map(str, sorted(shapes)))}): a label image "
                          "is made from the masks of one image.")
    return shapes.pop()
