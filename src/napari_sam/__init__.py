"""napari-samkit: Segment Anything for biologists, inside napari.

The public API is loaded lazily, so ``import napari_sam`` stays cheap (no torch
until a model, predictor or generator is used).
"""

from __future__ import annotations

from ._lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "load_model": "napari_sam.loading",
    "list_models": "napari_sam.registry",
    "get_spec": "napari_sam.registry",
    "ModelSpec": "napari_sam.registry",
    "Predictor": "napari_sam.predictor",
    "Prediction": "napari_sam.predictor",
    "ImageEmbedding": "napari_sam.embedding",
    "EmbeddingCache": "napari_sam.embedding",
    "generate_masks": "napari_sam.automatic",
    "masks_to_labels": "napari_sam.automatic",
    "segment_boxes": "napari_sam.automatic",
    "segment_from_labels": "napari_sam.automatic",
    "SamkitError": "napari_sam.errors",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
