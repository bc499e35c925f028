"""Training data: pairs of an image and its instance labels, from arrays, files or folders.

A :class:`TrainingImage` is one 2D plane: ``image`` (``H x W``, ``H x W x C`` RGB(A),
any dtype) and ``labels`` (``H x W`` integers, 0 background, one id per object).
Stacks (``Z x H x W`` with ``Z x H x W`` labels) become one pair per plane that holds
objects. The split into training and validation sets is by image, never by object,
so validation figures are measured on images the model has not seen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TrainingError
from ..files import LABEL_SUFFIXES, beside, expand_inputs


@dataclass(frozen=True)
class TrainingImage:
    """One annotated 2D plane.

    Attributes:
        name: where it came from, for messages and metadata (``file`` or ``file[z=3]``).
        image: ``H x W`` or ``H x W x C`` pixels.
        labels: ``H x W`` integer instance labels (0 background).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def object_ids(self) -> np.ndarray:
        ids = np.unique(self.labels)
        return ids[ids != 0]


def _as_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        from skimage.measure import label

        return label(labels).astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.array_equal(labels, np.round(labels)):
            return labels.astype(np.int64)
        raise TrainingError(f"Labels of {name} are {labels.dtype}, not integers: give an instance label image.")
    return labels


def planes_of(image: np.ndarray, labels: np.ndarray, name: str) -> list[TrainingImage]:
    """Split one (image, labels) pair into 2D planes; planes without objects are dropped.

    Accepts ``H x W`` / ``H x W x C`` images with ``H x W`` labels, and stacks
    ``... x H x W`` (optionally ``... x H x W x C``) with labels ``... x H x W``.

    Raises:
        TrainingError: when the label image does not fit the image.
    """
    image = np.asarray(image)
    labels = _as_labels(labels, name)
    if labels.ndim < 2:
        raise TrainingError(f"Labels of {name} have shape {labels.shape}; expected H x W (or a stack of planes).")
    if labels.ndim == 2:
        if image.shape[:2] != labels.shape or image.ndim > 3:
            raise TrainingError(
                f"Image {name} has shape {image.shape} but its labels {labels.shape}: they must have the same "
                "height and width (an image may add one channel axis at the end)."
            )
        return [TrainingImage(name, image, labels)] if labels.any() else []
    lead = labels.shape[:-2]
    if image.shape[: labels.ndim] != labels.shape or image.ndim > labels.ndim + 1:
        raise TrainingError(
            f"Stack {name} has shape {image.shape} but its labels {labels.shape}: a stack of planes needs labels "
            "of the same shape (channels, if any, last)."
        )
    out = []
    for index in np.ndindex(*lead):
        plane_labels = labels[index]
        if plane_labels.any():
            where = ",".join(str(i) for i in index)
            out.append(TrainingImage(f"{name}[{where}]", image[index], plane_labels))
    return out


def load_training_images(
    images: str | os.PathLike | Sequence,
    labels: str | os.PathLike | Sequence | None = None,
) -> list[TrainingImage]:
    """Annotated planes from arrays, files, globs or folders.

    Args:
        images: an array, a list of arrays, or files / globs / a folder of images.
        labels: the matching label arrays or files (same order), or a folder in
            which each image's labels are found by name (``cell.tif`` ->
            ``cell.tif`` or ``cell_labels.tif``, ``_mask``, ``_masks``, ``_seg``...);
            None when ``images`` is a folder holding both.

    Returns:
        One :class:`TrainingImage` per annotated plane.

    Raises:
        TrainingError: unmatched or mismatched pairs, or no object at all.
        InputFileError: an unreadable file.
    """
    from ..io import read_image

    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    if isinstance(images, np.ndarray) or (
        isinstance(images, (list, tuple)) and images and isinstance(images[0], np.ndarray)
    ):
        image_list = [images] if isinstance(images, np.ndarray) else list(images)
        label_list = [labels] if isinstance(labels, np.ndarray) else list(labels or [])
        if len(image_list) != len(label_list):
            raise TrainingError(f"Got {len(image_list)} images but {len(label_list)} label images; give one per image.")
        pairs = [(f"image {i}", im, lab) for i, (im, lab) in enumerate(zip(image_list, label_list))]
    else:
        image_paths = expand_inputs(images)
        if not image_paths:
            raise TrainingError(f"No image files found in {images!r}.")
        if labels is None or (isinstance(labels, (str, os.PathLike)) and Path(labels).expanduser().is_dir()):
            label_dir = Path(labels).expanduser() if labels is not None else None
            label_paths = []
            for path in image_paths:
                found = beside(path, label_dir or path.parent)
                if found is None:
                    raise TrainingError(
                        f"No label image found for {path} in {label_dir or path.parent} (looked for "
                        f"{path.stem}{{,{','.join(LABEL_SUFFIXES)}}}.*); give --labels explicitly."
                    )
                label_paths.append(found)
        else:
            label_paths = expand_inputs(labels)
        if len(label_paths) != len(image_paths):
            raise TrainingError(f"Got {len(image_paths)} images but {len(label_paths)} label images; give one per "
                                "image.")
        pairs = [(str(p), read_image(p), read_image(q)) for p, q in zip(image_paths, label_paths)]
    out = []
    for name, image, label_image in pairs:
        out.extend(planes_of(image, label_image, name))
    if not out:
        raise TrainingError("The label images hold no objects (all zero): annotate some objects first.")
    return out


def split_by_image(
    items: Sequence[TrainingImage], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[TrainingImage], list[TrainingImage]]:
    """Split into training and validation planes, whole images at a time (seeded).

    Planes of one stack file stay on one side. With a single source image there is
    no validation set (``[]``); otherwise at least one image is held out when
    ``val_fraction > 0``, and at least one is kept for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TrainingError(f"val_fraction must be in [0, 1); got {val_fraction}.")
    sources = sorted({item.name.split("[")[0] for item in items})
    if val_fraction == 0 or len(sources) < 2:
        return list(items), []
    order = np.random.default_rng(seed).permutation(len(sources))
    n_val = min(len(sources) - 1, max(1, int(round(val_fraction * len(sources)))))
    held = {sources[i] for i in order[:n_val]}
    train = [item for item in items if item.name.split("[")[0] not in held]
    val = [item for item in items if item.name.split("[")[0] in held]
    return train, val
