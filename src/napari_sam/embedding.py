"""Image embeddings: the encoder output, the geometry to map results back, and its key.

An embedding is computed once per image plane (and per window of a plane: a tile,
a zoomed window of small objects, a crop of the automatic generator) and reused
for every prompt. Where an embedding came from is one :class:`EmbeddingKey`; every
cache and store key is derived from it, nowhere else:

* :func:`image_signature`: a content hash of a numpy image, a cheap signature
  (shape, dtype, chunks, a few sampled chunks, the store path) of a lazy one;
* :func:`model_identity`: the model's name and its weights (the registry's SHA-256,
  or a fingerprint of the image encoder's weights once they changed);
* :func:`plane_view`: how a plane is read out of the image and turned into RGB.

:class:`EmbeddingCache` keeps recent embeddings in memory (bounded, least recently
used first out); it holds no global state (each widget or pipeline owns its cache).
The disk store is :mod:`napari_sam.store`; the one entry point that goes through
memory, store and encoder is :func:`napari_sam.embeddings.compute_embeddings`.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

#: Number of chunks whose bytes go into the signature of a lazy (dask, zarr) image.
SAMPLED_CHUNKS = 8
#: Elements of each weight tensor that go into the fingerprint of changed weights.
_SAMPLED_WEIGHTS = 4096


def _package_version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True)
class EmbeddingKey:
    """Where an embedding came from; hashable, so it is also the memory-cache key.

    Attributes:
        image: :func:`image_signature` of the whole image (a stack: the whole stack).
        plane: index along the plane (non-displayed) axes of a stack, None for a 2D image.
        window: ``(x0, y0, x1, y1)`` in pixels of the plane (x1, y1 exclusive), None
            for the whole plane.
        model: :func:`model_identity` of the model.
        precision: the encoder precision actually used (``float32`` or ``bfloat16``).
        version: napari-samkit's version that computed it.
        view: :func:`plane_view`: how the plane was read and made RGB ("" = the last
            two spatial axes, channels as :func:`~napari_sam.preprocess.as_rgb` takes them).
    """

    image: str
    plane: tuple[int, ...] | None
    window: tuple[int, int, int, int] | None
    model: str
    precision: str
    version: str
    view: str = ""

    def __post_init__(self) -> None:
        plane = None if self.plane is None or len(self.plane) == 0 else tuple(int(p) for p in self.plane)
        window = None if self.window is None else tuple(int(v) for v in self.window)
        object.__setattr__(self, "plane", plane)
        object.__setattr__(self, "window", window)

    @classmethod
    def create(
        cls,
        image: str,
        model,
        precision: str | None = None,
        plane: Sequence[int] | None = None,
        window: Sequence[int] | None = None,
        view: str = "",
    ) -> EmbeddingKey:
        """The key of ``plane`` / ``window`` of an image with signature ``image`` under ``model``.

        ``precision`` is resolved for the model (see :func:`napari_sam.precision.resolve_precision`).
        """
        from .precision import resolve_precision

        return cls(image, plane, window, model_identity(model), resolve_precision(precision, model.spec),
                   _package_version(), view)

    def at(self, plane: Sequence[int] | None = None, window: Sequence[int] | None = None) -> EmbeddingKey:
        """The same image, model and precision at another plane and window."""
        return replace(self, plane=plane, window=window)

    def inverted(self) -> EmbeddingKey:
        """The key of the same plane with its gray levels inverted (see :func:`inverted_view`)."""
        return replace(self, view=inverted_view(self.view))

    @property
    def store_attributes(self) -> dict[str, str]:
        """What one store (one image, one model, one precision, one version) has in common."""
        return {"image": self.image, "model": self.model, "precision": self.precision, "version": self.version}

    @property
    def entry_name(self) -> str:
        """Name of this plane / window inside its store, e.g. ``plane-3_window-0-0-512-512``."""
        parts = ["plane-" + "-".join(map(str, self.plane)) if self.plane is not None else "image"]
        if self.window is not None:
            parts.append("window-" + "-".join(map(str, self.window)))
        if self.view:
            parts.append("view-" + hashlib.blake2b(self.view.encode(), digest_size=4).hexdigest())
        return "_".join(parts)


@dataclass(frozen=True)
class ImageEmbedding:
    """The encoder output for one 2D image.

    Attributes:
        features: ``1 x 256 x 64 x 64`` float32 image embedding.
        original_size: ``(H, W)`` of the image given by the user.
        input_size: ``(h, w)`` of the resized image inside the padded encoder input.
        image_size: side ``S`` of the square encoder input.
        model_name: registry name of the model that computed it.
        key: where it came from (None when computed by hand with
            :func:`~napari_sam.inference.embed_image`).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int
    model_name: str
    key: EmbeddingKey | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: input-frame pixels per original pixel along rows and columns."""
        return (
            self.input_size[0] / self.original_size[0],
            self.input_size[1] / self.original_size[1],
        )

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


# --------------------------------------------------------------------------- image signatures


def image_key(image: np.ndarray) -> str:
    """A content hash of a numpy ``image`` (shape, dtype and every byte)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _chunk_shape(array) -> tuple[int, ...]:
    chunks = getattr(array, "chunksize", None)  # dask
    if chunks is None:
        chunks = getattr(array, "chunks", None)  # zarr (ints); dask's .chunks are tuples of tuples
        if chunks is not None and chunks and isinstance(chunks[0], tuple):
            chunks = tuple(max(c) if c else 1 for c in chunks)
    if chunks is None or len(chunks) != len(array.shape):
        # Anything else that slices: planes of the leading axes.
        chunks = tuple(1 for _ in array.shape[:-2]) + tuple(array.shape[-2:])
    return tuple(max(1, int(c)) for c in chunks)


def _store_location(array) -> str:
    """Path and modification time of a zarr array's store, when there is one ("" else)."""
    for candidate in (array, getattr(array, "store_path", None), getattr(array, "store", None)):
        root = getattr(candidate, "root", None) or getattr(candidate, "path", None)
        if isinstance(root, (str, os.PathLike)) and os.path.exists(root):
            path = os.path.abspath(root)
            name = getattr(array, "path", "") or ""
            full = os.path.join(path, name) if name and os.path.exists(os.path.join(path, name)) else path
            return f"{full}@{os.stat(full).st_mtime_ns}"
    return ""


def lazy_signature(array, sampled_chunks: int = SAMPLED_CHUNKS) -> str:
    """A cheap signature of a lazy array (dask, zarr, anything that slices) without loading it.

    Shape, dtype, chunk shape, the store's path and modification time (zarr) and the
    bytes of ``sampled_chunks`` chunks spread evenly over the array (first and last
    included). Two lazy arrays with the same signature are the same image unless one
    was edited in chunks that were not sampled: give a new folder (or ``overwrite``)
    to a store after editing an image in place.
    """
    shape = tuple(int(s) for s in array.shape)
    chunks = _chunk_shape(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((shape, np.dtype(array.dtype).str, chunks, _store_location(array))).encode())
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks))
    count = math.prod(grid)
    if count:
        picks = sorted({int(round(v)) for v in np.linspace(0, count - 1, min(sampled_chunks, count))})
        for flat in picks:
            block = np.unravel_index(flat, grid)
            index = tuple(slice(b * c, min((b + 1) * c, s)) for b, c, s in zip(block, chunks, shape))
            part = np.ascontiguousarray(np.asarray(array[index]))
            digest.update(repr(index).encode())
            digest.update(memoryview(part).cast("B"))
    return "lazy-" + digest.hexdigest()


def image_signature(image) -> str:
    """The signature of an image for :class:`EmbeddingKey`: ``blake2b-...`` or ``lazy-...``.

    A numpy array is hashed in full (every byte; about 1 GB/s). A dask or zarr
    array (or any other array-like that is not numpy) gets :func:`lazy_signature`,
    which reads only a few chunks.
    """
    if isinstance(image, np.ndarray):
        return "blake2b-" + image_key(image)
    return lazy_signature(image)


# --------------------------------------------------------------------------- model identity


def _weights_state(model) -> tuple:
    """Cheap fingerprint of the image encoder's parameter storage: changes on every in-place edit."""
    state = []
    for tensor in model.image_encoder.state_dict(keep_vars=True).values():
        try:
            state.append((tensor.data_ptr(), tensor._version))
        except RuntimeError:  # inference tensors have no version counter
            state.append((tensor.data_ptr(), -1))
    return tuple(state)


def _weights_fingerprint(model) -> str:
    """Hash of the image encoder's weights: shapes and an evenly strided sample of every tensor."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in model.image_encoder.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLED_WEIGHTS)
        sample = flat[::step].float().cpu().contiguous().numpy()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(memoryview(sample).cast("B"))
    return digest.hexdigest()


def mark_loaded(model, checkpoint: str | os.PathLike | None = None) -> None:
    """Record that ``model`` holds the weights it was loaded with (``load_model`` calls it).

    Args:
        checkpoint: the file the weights came from when the registry has no SHA-256
            for them (a checkpoint given by path): its path, size and mtime identify them.
    """
    origin = None
    if checkpoint is not None:
        stat = os.stat(checkpoint)
        origin = f"{os.path.abspath(checkpoint)}|{stat.st_size}|{stat.st_mtime_ns}"
    model._samkit_loaded = (_weights_state(model), origin)


def model_identity(model) -> str:
    """Name and weights of ``model``, e.g. ``lite_medsam@sha256-79d8c9dca6db4d69``.

    While a model holds the weights it was loaded with, they are named by the
    registry's SHA-256 of the checkpoint, or (a checkpoint given by path) by a hash
    of its path, size and modification time. Once its image encoder's weights
    changed in place (fine-tuning) or for a model that was built by hand, by a
    fingerprint of the encoder's weights (``@weights-...``), recomputed whenever
    they change. Only the image encoder matters: embeddings do not depend on the
    prompt encoder and the decoder.
    """
    state = _weights_state(model)
    cached = model.__dict__.get("_samkit_identity")
    if cached is not None and cached[0] == state:
        return cached[1]
    spec = model.spec
    loaded = model.__dict__.get("_samkit_loaded")
    if loaded is not None and loaded[0] == state and spec.sha256:
        identity = f"{spec.name}@sha256-{spec.sha256[:16]}"
    elif loaded is not None and loaded[0] == state and loaded[1]:
        identity = f"{spec.name}@file-{hashlib.blake2b(loaded[1].encode(), digest_size=8).hexdigest()}"
    else:
        identity = f"{spec.name}@weights-{_weights_fingerprint(model)}"
    model._samkit_identity = (state, identity)
    return identity


# --------------------------------------------------------------------------- views


def plane_view(
    displayed: Sequence[int] | None = None,
    ndim: int | None = None,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
) -> str:
    """How a plane is read out of an image and made RGB, for :attr:`EmbeddingKey.view`.

    Args:
        displayed: ``(row_axis, col_axis)`` among the ``ndim`` spatial axes (None,
            or the last two in order: the default).
        channel_axis: data axis that holds channels (None: RGB last, or none).
        channels: the channels used (None: as :func:`~napari_sam.preprocess.as_rgb` picks).

    Returns:
        ``""`` for the default, else e.g. ``"axes=0,2;channel_axis=0;channels=0,1,2"``.
    """
    parts = []
    if displayed is not None and ndim is not None and tuple(displayed) != (ndim - 2, ndim - 1):
        parts.append("axes=" + ",".join(str(int(a)) for a in displayed))
    if channel_axis is not None:
        parts.append(f"channel_axis={int(channel_axis)}")
    if channels is not None:
        parts.append("channels=" + ",".join(str(int(c)) for c in channels))
    return ";".join(parts)


#: The part of :attr:`EmbeddingKey.view` of a plane whose gray levels were inverted (see
#: :mod:`napari_sam.polarity`).
INVERTED = "inverted"


def inverted_view(view: str) -> str:
    """``view`` of the same plane with its gray levels inverted."""
    return ";".join(part for part in (view, INVERTED) if part)


# --------------------------------------------------------------------------- memory cache


class EmbeddingCache:
    """A bounded least-recently-used map from keys to :class:`ImageEmbedding`.

    Keys are :class:`EmbeddingKey` (any hashable works). Each embedding is
    1 x 256 x 64 x 64 float32 (4 MiB); the default bound keeps 64 of them.
    Thread-safe: the annotator's embedding worker and its preview worker (zoomed
    windows) share one.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> ImageEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Hashable, embedding: ImageEmbedding) -> None:
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > 1 and sum(e.nbytes for e in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
