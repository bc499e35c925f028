"""An nD image as a stack of 2D planes along depth or time, without a GUI.

One representation serves the annotator, the automatic widget, ``samkit segment``
and scripts: :class:`PlaneStack` holds the image data (numpy, dask, zarr: anything
that slices), the :class:`~napari_sam.annotation.PlaneGeometry` of one plane (which
two spatial axes are rows and columns, where the others stand) and the spatial
axis the planes follow (``Z`` for depth, ``T`` for time). Every plane's embedding
key is built here (:meth:`PlaneStack.key`), so an embedding computed by the
annotator, by propagation or by ``samkit embed`` is found by the others in memory
and in the store.

Axis letters (:func:`parse_axes`): one letter per spatial axis, ``Y`` and ``X``
last, e.g. ``"ZYX"`` (a volume), ``"TYX"`` (a time-lapse), ``"TZYX"``. Channels are
not spatial and are not named here (the image's ``rgb`` / ``channel_axis`` say
where they are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .annotation import PlaneGeometry, image_plane, spatial_shape
from .embedding import EmbeddingCache, EmbeddingKey, ImageEmbedding, image_signature, plane_view
from .errors import ImageError

#: What each axis letter means (for messages and the CLI's help).
AXIS_NAMES = {"Z": "depth", "T": "time", "Y": "rows", "X": "columns"}
#: The letters the planes can follow, in order of preference when guessing.
THROUGH_AXES = ("Z", "T")


def default_axes(ndim: int) -> str:
    """The axes assumed for ``ndim`` spatial axes: ``YX``, ``ZYX``, ``TZYX``."""
    if ndim < 2 or ndim > 4:
        raise ImageError(f"An image with {ndim} spatial axes has no default axis letters; give them (e.g. TZYX).")
    return "TZYX"[4 - ndim:]


def parse_axes(axes: str | None, ndim: int) -> str:
    """Check axis letters for ``ndim`` spatial axes (None: :func:`default_axes`).

    Raises:
        ImageError: wrong count, unknown or repeated letters, or ``Y``, ``X`` not last.
    """
    if axes is None:
        return default_axes(ndim)
    letters = str(axes).strip().upper()
    if len(letters) != ndim:
        raise ImageError(f"--axes {axes!r} names {len(letters)} axes but the image has {ndim} spatial axes "
                         f"(e.g. {default_axes(ndim) if 2 <= ndim <= 4 else 'TZYX'}).")
    unknown = sorted(set(letters) - set(AXIS_NAMES))
    if unknown or len(set(letters)) != len(letters):
        raise ImageError(f"Axes {axes!r}: use each of the letters T, Z, Y, X at most once "
                         f"({'unknown: ' + ', '.join(unknown) if unknown else 'a letter is repeated'}).")
    if not letters.endswith("YX"):
        raise ImageError(f"Axes {axes!r}: Y and X must be the last two axes (e.g. ZYX, TYX, TZYX).")
    return letters


def through_axis(axes: str, prefer: str | None = None) -> int | None:
    """Index of the axis planes follow: ``prefer`` if given, else Z, else T; None for ``YX``."""
    if prefer is not None:
        prefer = prefer.upper()
        if prefer not in axes[:-2]:
            raise ImageError(f"The image's axes are {axes}: there is no {prefer} axis to go through.")
        return axes.index(prefer)
    for letter in THROUGH_AXES:
        if letter in axes[:-2]:
            return axes.index(letter)
    return None


@dataclass(frozen=True)
class PlaneStack:
    """An image seen as planes along one spatial axis.

    Attributes:
        data: the image data, spatial axes plus an optional channel axis.
        geometry: a plane of the spatial volume (displayed axes; position on the
            other axes, which is kept for every axis but :attr:`axis`).
        axis: the spatial axis the planes follow; None for a 2D image.
        rgb: the last axis of ``data`` holds RGB(A) channels.
        channel_axis: axis of ``data`` that holds channels (multichannel), or None.
        signature: the image's :func:`~napari_sam.embedding.image_signature`
            (computed on first use when not given).
        kind: ``"Z"`` or ``"T"`` (or another letter), for messages and tracks.
    """

    data: object
    geometry: PlaneGeometry
    axis: int | None
    rgb: bool = False
    channel_axis: int | None = None
    signature: str | None = None
    kind: str = "Z"

    @classmethod
    def of(cls, data, axes: str | None = None, through: str | None = None, rgb: bool = False,
           channel_axis: int | None = None, position: Sequence[int] | None = None) -> PlaneStack:
        """A stack of image ``data`` with axis letters (see :func:`parse_axes`), planes ``Y x X``.

        Args:
            through: the letter planes follow (default: Z if present, else T).
            position: index along every spatial axis of the first plane (default 0s).
        """
        shape = spatial_shape(data.shape, rgb=rgb, channel_axis=channel_axis)
        letters = parse_axes(axes, len(shape))
        axis = through_axis(letters, through)
        ndim = len(shape)
        geometry = PlaneGeometry.at(shape, (ndim - 2, ndim - 1), position if position is not None else [0] * ndim)
        return cls(data, geometry, axis, rgb, channel_axis, None, letters[axis] if axis is not None else "Z")

    def __post_init__(self) -> None:
        if self.axis is not None and (self.axis in self.geometry.displayed or not 0 <= self.axis < self.geometry.ndim):
            raise ImageError(f"Axis {self.axis} is displayed or not a spatial axis: planes cannot follow it.")

    def __len__(self) -> int:
        return 1 if self.axis is None else self.geometry.spatial_shape[self.axis]

    @property
    def index(self) -> int:
        """The index of :attr:`geometry`'s plane along :attr:`axis` (0 for a 2D image)."""
        return 0 if self.axis is None else self.geometry.position[self.axis]

    @property
    def channels(self) -> list[int] | None:
        """The channels made RGB: the first three of a multichannel image with more (else as_rgb's choice)."""
        if self.channel_axis is None:
            return None
        return [0, 1, 2] if int(self.data.shape[self.channel_axis]) > 3 else None

    def at(self, index: int) -> PlaneGeometry:
        """The geometry of plane ``index`` along :attr:`axis`."""
        if self.axis is None:
            return self.geometry
        if not 0 <= int(index) < len(self):
            raise ImageError(f"Plane {index} is outside the stack of {len(self)} planes.")
        position = list(self.geometry.position)
        position[self.axis] = int(index)
        return replace(self.geometry, position=tuple(position))

    def moved_to(self, index: int) -> PlaneStack:
        """The same stack with :attr:`geometry` on plane ``index``."""
        return replace(self, geometry=self.at(index))

    def plane(self, index: int) -> np.ndarray:
        """Plane ``index``: ``H x W``, or ``H x W x C`` with channels last."""
        return image_plane(self.data, self.at(index), rgb=self.rgb, channel_axis=self.channel_axis)

    def with_signature(self) -> PlaneStack:
        """This stack with its image signature computed (hash once, then build many keys)."""
        if self.signature is not None:
            return self
        data = self.data[0] if isinstance(self.data, list) else self.data  # a multiscale layer's full level
        return replace(self, signature=image_signature(data))

    def key(self, index: int, model, precision: str) -> EmbeddingKey:
        """The embedding key of plane ``index`` (the one cache and store key of a stack's planes)."""
        geometry = self.at(index)
        signature = self.signature if self.signature is not None else self.with_signature().signature
        view = plane_view(geometry.displayed, geometry.ndim, self.channel_axis, self.channels)
        return EmbeddingKey.create(signature, model, precision, plane=geometry.plane_index, view=view)

    def embedding(self, index: int, model, precision: str | None = None, cache: EmbeddingCache | None = None,
                  store=None) -> ImageEmbedding:
        """Plane ``index``'s embedding: from memory, the store, or the encoder (written to both)."""
        from .embed import embed_one
        from .precision import resolve_precision

        resolved = resolve_precision(precision, model.spec)
        return embed_one(model, self.plane(index), key=self.key(index, model, resolved), store=store, cache=cache,
                         channel_axis=None if self.channel_axis is None else -1, channels=self.channels,
                         precision=resolved)

    def embed_planes(self, model, indices: Sequence[int] | None = None, precision: str | None = None,
                     cache: EmbeddingCache | None = None, store=None,
                     progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> Iterator[tuple[int, ImageEmbedding]]:
        """``(index, embedding)`` of every plane (or of ``indices``), computing only what is missing.

        Raises:
            Cancelled: when ``cancel()`` is True before a plane (what was done is kept).
        """
        from .errors import Cancelled

        order = list(range(len(self))) if indices is None else [int(i) for i in indices]
        for done, index in enumerate(order):
            if cancel is not None and cancel():
                raise Cancelled(f"Embedding the stack was cancelled after {done} of {len(order)} planes.")
            embedding = self.embedding(index, model, precision, cache, store)
            if progress is not None:
                progress(done + 1, len(order))
            yield index, embedding

    def predictor_on(self, predictor, index: int, cache: EmbeddingCache | None = None, store=None) -> None:
        """Set ``predictor`` to plane ``index`` (its embedding, and the plane for zoomed windows)."""
        embedding = self.embedding(index, predictor.model, predictor.precision,
                                   cache if cache is not None else predictor.cache, store)
        predictor.set_embedding(embedding, image=self.plane(index),
                                channel_axis=None if self.channel_axis is None else -1, channels=self.channels)
        predictor.store = store
