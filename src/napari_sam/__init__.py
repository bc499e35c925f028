"""napari-samkit: Segment Anything for biologists, inside napari.

The public API is loaded lazily, so ``import napari_sam`` stays cheap (no torch
until a model, predictor or generator is used).
"""

from __future__ import annotations

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


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
