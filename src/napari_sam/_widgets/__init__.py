"""napari dock widgets of napari-samkit (the only modules that import napari and Qt)."""

from .annotator import AnnotatorWidget

__all__ = ["AnnotatorWidget"]
