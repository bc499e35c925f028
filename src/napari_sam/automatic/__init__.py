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

from .amg import Cancelled
from .edges import edge_map
from .generator import generate_masks
from .labels import masks_to_labels

_LAZY = {
    "segment_boxes": "napari_sam.automatic.refine",
    "segment_from_labels": "napari_sam.automatic.refine",
    "segment_everything_with_boxes": "napari_sam.automatic.box_strategy",
}

__all__ = ["Cancelled", "edge_map", "generate_masks", "masks_to_labels", *_LAZY]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'napari_sam.automatic' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
