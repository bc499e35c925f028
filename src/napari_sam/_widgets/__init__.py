"""napari dock widgets of napari-samkit (the only modules that import napari and Qt)."""

from .annotator import AnnotatorWidget
from .series import ImageSeriesWidget

__all__ = ["AnnotatorWidget", "ImageSeriesWidget"]
