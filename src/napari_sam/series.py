"""A series of images annotated one at a time, without a GUI.

The image-series widget (:mod:`napari_sam._widgets.series`) opens a folder (or
files, globs, list files: :func:`~napari_sam.files.expand_inputs`) and shows one
image after the other in the annotator. Everything it decides without napari is
here: the images, where each image's labels are written and found, the first
image without labels (where a session resumes), reading and saving labels, and
preparing the next image (read from disk, its embedding computed) while the
current one is being annotated.

Where labels go: ``<stem>_labels.tif`` (:data:`~napari_sam.files.OUTPUT_SUFFIX`)
beside each image, or, with an output folder, at the image's place under the
images' common folder mirrored in the output folder
(:func:`~napari_sam.files.mirrored_output`: ``plate1/a.tif`` ->
``out/plate1/a_labels.tif``). Existing labels are found there under the same
name (``<stem>_labels.tif`` or ``.tiff``, :func:`~napari_sam.files.beside`).

Empty labels are not written unless a labels file exists already (then it is
overwritten, so erasing every object is saved too): an image in which nothing
was annotated stays "without labels", and :meth:`ImageSeries.first_unlabelled`
keeps meaning "the first image nobody has annotated yet".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotation import spatial_shape
from .embedding import EmbeddingCache, EmbeddingKey
from .errors import ImageError, InputFileError
from .files import OUTPUT_SUFFIX, beside, common_root, expand_inputs, mirrored_output
from .io import read_image, write_labels

#: The name ending of an image's labels (``cells_01.tif`` -> ``cells_01_labels.tif``), from ``OUTPUT_SUFFIX``.
LABELS_ENDING = Path(OUTPUT_SUFFIX).stem
#: Extensions of the labels files that are read back (they are written as ``.tif``).
LABELS_EXTENSIONS = (".tif", ".tiff")
#: The largest label id the annotator's layers hold (``uint32``).
MAX_LABEL = int(np.iinfo(np.uint32).max)


def is_rgb(data) -> bool:
    """True for image data whose last axis holds RGB(A) channels: ``H x W x 3`` or ``... x 4``.

    The widget passes this to napari (``rgb=``) so that the layer and the embedding
    prepared for it agree on where the channels are.
    """
    return len(data.shape) >= 3 and int(data.shape[-1]) in (3, 4)


def channel_axis_of(data, rgb: bool, channels_first: bool) -> int | None:
    """The channel axis as the annotator takes it: 0 when ``channels_first`` applies (a non-RGB image
    with at least 3 axes, the annotator's *first axis holds channels*), else None."""
    return 0 if channels_first and not rgb and len(data.shape) >= 3 else None


@dataclass(frozen=True)
class PreparedImage:
    """One image of a series read from disk, with its labels and (optionally) its embedding computed.

    Attributes:
        index: its position in the series.
        path: the image file.
        data: the image as read (``H x W``, ``H x W x C`` or a stack).
        rgb: its last axis holds RGB(A) channels (:func:`is_rgb`).
        channel_axis: 0 for a channels-first image (see :func:`channel_axis_of`), else None.
        labels: its existing labels, ``uint32`` of the spatial shape, or None.
        key: the embedding key of its first plane, once that embedding is in the cache, else None.
    """

    index: int
    path: Path
    data: np.ndarray
    rgb: bool
    channel_axis: int | None
    labels: np.ndarray | None
    key: EmbeddingKey | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape: the shape of its labels."""
        return spatial_shape(self.data.shape, rgb=self.rgb, channel_axis=self.channel_axis)

    @property
    def channels_first(self) -> bool:
        return self.channel_axis is not None


@dataclass(frozen=True)
class ImageSeries:
    """Images annotated one after the other, each with its labels file.

    Attributes:
        images: the image files, in order.
        output: the folder labels are written to (None: beside each image).
        root: the images' common folder (what the output folder mirrors).
    """

    images: tuple[Path, ...]
    output: Path | None = None
    root: Path = Path(".")

    @classmethod
    def open(cls, inputs: str | os.PathLike | Iterable, output: str | os.PathLike | None = None,
             recursive: bool = False) -> ImageSeries:
        """The series of ``inputs``: image files, globs, folders or ``.txt`` list files.

        Raises:
            InputFileError: nothing to open, or two images whose labels would be one file
                (``a.tif`` and ``a.png``), or a labels file that is one of the images.
        """
        images = tuple(expand_inputs(inputs, recursive))
        if not images:
            raise InputFileError("No images to open: give a folder, image files, a glob or a list file.")
        series = cls(images, None if output is None else Path(output), common_root(images))
        series.check_label_paths()
        return series

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        """The image's file name, e.g. ``cells_03.tif``."""
        return self.images[index].name

    def describe(self, index: int) -> str:
        """E.g. ``"image 3 of 50: cells_03.tif"`` (``index`` counts from 0)."""
        return f"image {index + 1} of {len(self)}: {self.name(index)}"

    # ------------------------------------------------------------------ where labels are

    def labels_path(self, index: int) -> Path:
        """Where the labels of image ``index`` are written: ``<stem>_labels.tif`` beside it or in the output folder."""
        image = self.images[index]
        if self.output is None:
            return image.parent / (image.stem + OUTPUT_SUFFIX)
        return mirrored_output(image, self.root, self.output)

    def labels_file(self, index: int) -> Path | None:
        """The existing labels file of image ``index`` (``<stem>_labels.tif`` / ``.tiff``), or None."""
        return beside(self.images[index], self.labels_path(index).parent, suffixes=(LABELS_ENDING,),
                      same_name=False, extensions=LABELS_EXTENSIONS)

    def has_labels(self, index: int) -> bool:
        return self.labels_file(index) is not None

    def first_unlabelled(self) -> int | None:
        """The index of the first image without a labels file (where a session resumes), or None."""
        return next((i for i in range(len(self)) if not self.has_labels(i)), None)

    def check_label_paths(self) -> None:
        """Refuse a series in which saving one image's labels would overwrite another's, or an image.

        Raises:
            InputFileError: naming the images that clash.
        """
        images = {image.resolve(): image for image in self.images}
        owners: dict[Path, Path] = {}
        for index, image in enumerate(self.images):
            path = self.labels_path(index).resolve()
            if path in images:
                raise InputFileError(f"The labels of {image} would be written to {path}, which is one of the images; "
                                     "leave label images out of the inputs (or give a labels folder).")
            if path in owners:
                raise InputFileError(f"{owners[path]} and {image} would share the labels file {path}; rename one "
                                     "of them or put them in separate folders.")
            owners[path] = image

    # ------------------------------------------------------------------ reading

    def read_image(self, index: int) -> np.ndarray:
        """Image ``index`` as an array.

        Raises:
            InputFileError: the file cannot be read (says which file and why).
        """
        return read_image(self.images[index])

    def read_labels(self, index: int, shape: tuple[int, ...]) -> np.ndarray | None:
        """The existing labels of image ``index`` as ``uint32`` of ``shape`` (the image's spatial shape), or None.

        Raises:
            InputFileError: the labels file cannot be read, does not have ``shape``, or does not
                hold labels (non-integer or negative values, ids beyond ``uint32``). The file is
                left as it is: fix or move it before annotating this image, so it is not overwritten.
        """
        path = self.labels_file(index)
        if path is None:
            return None
        labels = read_image(path)
        image = self.name(index)
        if tuple(labels.shape) != tuple(shape):
            raise InputFileError(f"The labels file {path} has shape {labels.shape}, but {image} needs {tuple(shape)}; "
                                 "move or fix that file, then open this image again.")
        if labels.dtype == bool:
            return labels.astype(np.uint32)
        if not np.issubdtype(labels.dtype, np.integer) or (labels.size and (labels.min() < 0
                                                                          or int(labels.max()) > MAX_LABEL)):
            raise InputFileError(f"The labels file {path} of {image} does not hold labels (whole numbers from 0 to "
                                 f"{MAX_LABEL}, got {labels.dtype}); move or fix it, then open this image again.")
        return labels.astype(np.uint32)

    def prepare(self, index: int, model=None, precision: str | None = None, cache: EmbeddingCache | None = None,
                store_folder: str | os.PathLike | None = None, channels_first: bool = False,
                name: str | None = None) -> PreparedImage:
        """Read image ``index`` and its labels; with a ``model``, also compute its first plane's embedding.

        The embedding goes into ``cache`` (and the store of the image in ``store_folder``,
        :func:`~napari_sam.store.open_in_folder`) under the key the annotator looks up
        for the plane it shows first (see :func:`first_plane_key`). Runs in a worker.

        Args:
            name: the image layer's name (the store's file name; default: the file's stem).

        Raises:
            InputFileError: the image or its labels cannot be read.
        """
        data = self.read_image(index)
        rgb = is_rgb(data)
        channel_axis = channel_axis_of(data, rgb, channels_first)
        try:
            shape = spatial_shape(data.shape, rgb=rgb, channel_axis=channel_axis)
        except ImageError as error:
            raise InputFileError(f"Cannot annotate {self.name(index)}: {error}") from None
        labels = self.read_labels(index, shape)
        key = None
        if model is not None:
            key = embed_first_plane(data, rgb, channel_axis, model, precision, cache, store_folder,
                                    name or self.images[index].stem)
        return PreparedImage(index, self.images[index], data, rgb, channel_axis, labels, key)

    # ------------------------------------------------------------------ saving

    def save_labels(self, index: int, labels: np.ndarray, original: np.ndarray | None = None) -> Path | None:
        """Write the labels of image ``index`` (atomically, :func:`~napari_sam.io.write_labels`).

        Nothing is written when there is nothing to keep: labels without any object and
        no labels file yet, or labels equal to ``original`` (what was read or last saved)
        with a file in place.

        Returns:
            The file written, or None.

        Raises:
            InputFileError: the file cannot be written (which image, where, and why); the
                labels are not touched, so the caller can keep them and try again.
        """
        existing = self.labels_file(index)
        if existing is None and not np.any(labels):
            return None
        if existing is not None and original is not None and np.array_equal(labels, original):
            return None
        path = self.labels_path(index)
        try:
            return write_labels(path, labels)
        except InputFileError as error:
            raise InputFileError(f"The labels of {self.name(index)} were not saved: {error}") from None
        except OSError as error:
            raise InputFileError(f"The labels of {self.name(index)} were not saved to {path}: "
                                 f"{error.strerror or error}. Free some space or open the images again with "
                                 "another labels folder; the labels are still in the layer.") from None


def first_plane_key(data, rgb: bool, channel_axis: int | None, model, precision: str | None = None,
                    signature: str | None = None) -> tuple[object, EmbeddingKey]:
    """``(stack, key)``: the image as a :class:`~napari_sam.stack.PlaneStack` on its first plane
    (every non-displayed axis at 0, the last two spatial axes shown) and that plane's embedding key.

    It is the key the annotator builds for the same layer data on that plane
    (:meth:`PlaneStack.key <napari_sam.stack.PlaneStack.key>`); the widget shows
    each image on its first plane.
    """
    from dataclasses import replace

    from .stack import PlaneStack

    stack = PlaneStack.of(data, rgb=rgb, channel_axis=channel_axis)
    if signature is not None:
        stack = replace(stack, signature=signature)
    stack = stack.with_signature()
    return stack, stack.key(0, model, precision)


def embed_first_plane(data, rgb: bool, channel_axis: int | None, model, precision: str | None,
                      cache: EmbeddingCache | None, store_folder: str | os.PathLike | None = None,
                      name: str = "image") -> EmbeddingKey:
    """Compute the first plane's embedding into ``cache`` (and the image's store in ``store_folder``);
    returns its key. Nothing is computed when the cache or the store has it."""
    from .precision import resolve_precision

    resolved = resolve_precision(precision, model.spec)
    store, signature = None, None
    if store_folder is not None:
        from .store import open_in_folder

        store, whole = open_in_folder(store_folder, data, model, resolved, name=name, cache=cache)
        signature = whole.image
    stack, key = first_plane_key(data, rgb, channel_axis, model, resolved, signature)
    stack.embedding(0, model, resolved, cache=cache, store=store)
    return key
