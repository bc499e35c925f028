"""Automatic segmentation: segment everything, labels, edges, and box-driven stage 2.

* :func:`generate_masks`: Meta's point-grid algorithm (``strategy="points"``), or
  box proposals for box-only models (``strategy="boxes"``).
* :func:`masks_to_labels`: records -> one label image.
* :func:`edge_map`: zero-shot edges from the masks' probability maps.
* :func:`segment_boxes`, :func:`segment_from_labels`,
  :func:`segment_everything_with_boxes`: loaded on first use from
  :mod:`.refine` and :mod:`.box_strategy`.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# Loaded on first use, so that light modules of this package (the parameter table that
# `samkit --help` reads) do not import torch.
_LAZY = {
    "Cancelled": "napari_sam.automatic.amg",
    "edge_map": "napari_sam.automatic.edges",
    "generate_masks": "napari_sam.automatic.generator",
    "masks_to_labels": "napari_sam.automatic.labels",
    "segment_boxes": "napari_sam.automatic.refine",
    "segment_from_labels": "napari_sam.automatic.refine",
    "segment_everything_with_boxes": "napari_sam.automatic.box_strategy",
}

__all__ = [*_LAZY]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
