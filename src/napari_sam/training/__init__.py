"""Fine-tuning: the Segment Anything data engine's retraining step, on a CPU (no napari).

>>> from napari_sam.training import load_training_images, fine_tune
>>> images = load_training_images("annotated/images", "annotated/labels")
>>> result = fine_tune(images, name="my-lab-v1", base="lite_medsam")
>>> model = napari_sam.load_model("my-lab-v1")

See :mod:`.trainer` for what is trained and how, :mod:`.prompts` and :mod:`.losses`
for the paper's prompt simulation and loss.
"""

from .._lazy import lazy_attributes

# Loaded lazily: ``samkit --help`` reads the settings without importing torch.
_LAZY = {
    "TrainingImage": "napari_sam.training.data",
    "load_training_images": "napari_sam.training.data",
    "planes_of": "napari_sam.training.data",
    "split_by_image": "napari_sam.training.data",
    "FineTuneSettings": "napari_sam.training.settings",
    "FineTuneResult": "napari_sam.training.trainer",
    "TrainingProgress": "napari_sam.training.trainer",
    "evaluate_views": "napari_sam.training.trainer",
    "fine_tune": "napari_sam.training.trainer",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
