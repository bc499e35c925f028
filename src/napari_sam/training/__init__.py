"""Fine-tuning: the Segment Anything data engine's retraining step, on a CPU (no napari).

>>> from napari_sam.training import load_training_images, fine_tune
>>> images = load_training_images("annotated/images", "annotated/labels")
>>> result = fine_tune(images, name="my-lab-v1", base="lite_medsam")
>>> model = napari_sam.load_model("my-lab-v1")

See :mod:`.trainer` for what is trained and how, :mod:`.prompts` and :mod:`.losses`
for the paper's prompt simulation and loss.
"""

from .data import TrainingImage, load_training_images, planes_of, split_by_image
from .settings import FineTuneSettings
from .trainer import FineTuneResult, TrainingProgress, evaluate_views, fine_tune

__all__ = [
    "FineTuneResult",
    "FineTuneSettings",
    "TrainingImage",
    "TrainingProgress",
    "evaluate_views",
    "fine_tune",
    "load_training_images",
    "planes_of",
    "split_by_image",
]
