"""The one entry point for image embeddings: memory, then the store on disk, then the encoder.

:func:`compute_embeddings` is how the annotator's embedding job, the box and label
refinement windows, the automatic generators' crops, the automatic planes loop,
``samkit embed`` and fine-tuning obtain embeddings. It works for a 2D image or a
stack, the whole plane or windows (tiles) of it, in memory or with an
:class:`~napari_sam.store.EmbeddingStore`; every embedding it gives carries its
:class:`~napari_sam.embedding.EmbeddingKey`.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from .embedding import EmbeddingCache, EmbeddingKey, ImageEmbedding, image_signature, plane_view
from .errors import Cancelled, ImageError, PromptError

Window = tuple[int, int, int, int]


def _cancel_check(cancel) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    if isinstance(cancel, threading.Event) or hasattr(cancel, "is_set"):
        return cancel.is_set
    return cancel


def plane_layout(shape: Sequence[int], rgb: bool | None = None, channel_axis: int | None = None) -> tuple[int, ...]:
    """The leading (plane) axes' sizes of an image of ``shape``; ``()`` for a 2D image.

    A plane is ``H x W``, or ``H x W x C`` when ``rgb`` (default: the last axis has
    3 or 4 entries and the array has 3 or more axes) or with a ``channel_axis`` (an
    axis of the plane). The axes before the plane are the stack's.
    """
    ndim = len(shape)
    if rgb is None:
        rgb = ndim >= 3 and int(shape[-1]) in (3, 4) and channel_axis is None
    plane_ndim = 2 + (1 if rgb or channel_axis is not None else 0)
    if ndim < plane_ndim:
        raise ImageError(f"An image of shape {tuple(shape)} has no 2D plane to embed.")
    return tuple(int(s) for s in shape[: ndim - plane_ndim])


def _plane_size(shape: Sequence[int], leading: int, rgb_like: bool, channel_axis: int | None) -> tuple[int, int]:
    plane = [int(s) for s in shape[leading:]]
    if channel_axis is not None:
        del plane[channel_axis]
    elif rgb_like:
        plane = plane[:2]
    return plane[0], plane[1]


def _check_window(window, size: tuple[int, int]) -> Window | None:
    """A window as ints inside the plane; None for the whole plane."""
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in window)
    except (TypeError, ValueError):
        raise PromptError(f"A window is (x0, y0, x1, y1) in pixels; got {window!r}.") from None
    h, w = size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise PromptError(f"Window {(x0, y0, x1, y1)} is not inside the {w} x {h} plane (x0 < x1 <= {w}, "
                          f"y0 < y1 <= {h}).")
    return None if (x0, y0, x1, y1) == (0, 0, w, h) else (x0, y0, x1, y1)


def compute_embeddings(
    model,
    image,
    *,
    planes: Sequence[Sequence[int]] | None = None,
    windows: Sequence[Sequence[int]] | None = None,
    store=None,
    cache: EmbeddingCache | None = None,
    precision: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    key: EmbeddingKey | None = None,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    rgb: bool | None = None,
    rgb_ready: bool = False,
) -> Iterator[ImageEmbedding]:
    """Embeddings of planes (and windows of them) of an image, from memory, the store or the encoder.

    Each embedding is looked up in the memory cache, then in the store, and only
    then computed; a computed one is written to the store (and the cache) before it
    is yielded, so a cancelled or crashed run keeps everything it finished.

    Args:
        model: a loaded :class:`~napari_sam.models.sam.SamModel`.
        image: a 2D image (``H x W``, ``H x W x 3|4``, ``H x W x C`` with
            ``channel_axis``) or a stack of them (``... x H x W[ x C]``): numpy, dask,
            zarr or anything that slices; only the planes needed are read. Or a
            :class:`~napari_sam.source.PlaneSource` (one plane, read window by window:
            large images).
        planes: indices along the stack's leading axes (default: every plane; a 2D
            image has the one plane ``()``).
        windows: ``(x0, y0, x1, y1)`` pixel windows of each plane to embed (the
            window is cut out and resized to the encoder input); None: the whole plane
            (with a :class:`~napari_sam.source.PlaneSource`, None may also be an entry).
        store: an :class:`~napari_sam.store.EmbeddingStore` to read from and write to.
        cache: memory cache (default: the store's, else none).
        precision: encoder precision (None: the configured default; see
            :func:`napari_sam.precision.resolve_precision`).
        progress: ``progress(done, total)`` after every embedding (found or computed).
        cancel: a callable or :class:`threading.Event`, checked before every
            computation; True raises :class:`~napari_sam.errors.Cancelled`.
        key: when ``image`` is one plane taken out of a larger image, that plane's
            key (its image signature, plane and view are used; ``planes`` must be None);
            when ``image`` is a window of that plane (a tile), ``key.window`` says
            where: ``windows`` are then relative to ``image`` and keyed in plane pixels.
        channel_axis, channels: how a plane becomes RGB (see
            :func:`~napari_sam.preprocess.as_rgb`); ``channel_axis`` is an axis of the plane.
        rgb: the last axis holds channels (default: guessed, see :func:`plane_layout`).
        rgb_ready: ``image`` is already the ``H x W x 3`` output of ``as_rgb``.

    Returns:
        An iterator over ``len(planes) * len(windows)`` embeddings, plane by plane,
        each with its :attr:`~napari_sam.embedding.ImageEmbedding.key`. The store
        and arguments are checked before it is returned (a mismatching store raises
        at once, not at the first ``next``).

    Raises:
        StoreMismatchError: ``store`` was made for another image, model, precision or version.
        ImageError, PromptError: planes or windows outside the image.
    """
    from .precision import resolve_precision
    from .source import PlaneSource

    if isinstance(image, PlaneSource):
        return _from_source(model, image, windows, store, cache, precision, progress, cancel, key)
    shape = tuple(int(s) for s in image.shape)
    if rgb_ready:
        rgb, channel_axis, channels = True, None, None
    leading = plane_layout(shape, rgb, channel_axis)
    if (key is not None or rgb_ready) and leading:
        raise ImageError(f"With key= or rgb_ready=, image is one 2D plane; got shape {shape}.")
    if planes is None:
        plane_list = list(itertools.product(*(range(s) for s in leading)))
    else:
        if key is not None:
            raise ImageError("Give either key= (image is one plane) or planes=, not both.")
        plane_list = [tuple(int(i) for i in np.atleast_1d(p)) if np.ndim(p) else (int(p),) for p in planes]
        for plane in plane_list:
            if len(plane) != len(leading) or any(not 0 <= i < s for i, s in zip(plane, leading)):
                raise ImageError(f"Plane {plane} is not in the stack (its planes are indexed by {leading}).")
    rgb_like = rgb if rgb is not None else (len(shape) >= 3 and shape[-1] in (3, 4) and channel_axis is None)
    size = _plane_size(shape, len(leading), bool(rgb_like), channel_axis)
    window_list = [None] if windows is None else [_check_window(w, size) for w in windows]

    resolved = resolve_precision(precision, model.spec)
    if key is not None:
        base = EmbeddingKey.create(key.image, model, resolved, plane=key.plane, window=key.window, view=key.view)
    else:
        view = plane_view(channel_axis=channel_axis, channels=channels)
        base = EmbeddingKey.create(image_signature(image), model, resolved, view=view)
    if store is not None:
        store.bind(base)
    memory = cache if cache is not None else (store.cache if store is not None else None)
    is_cancelled = _cancel_check(cancel)
    return _iterate(model, image, base, plane_list, window_list, key is not None, store, memory, progress,
                    is_cancelled, channel_axis, channels, rgb_ready)


def _iterate(model, image, base, planes, windows, one_plane, store, memory, progress, is_cancelled,
             channel_axis, channels, rgb_ready) -> Iterator[ImageEmbedding]:
    from .inference import embed_image
    from .preprocess import as_rgb

    total, done = len(planes) * len(windows), 0
    for plane in planes:
        rgb = None
        for window in windows:
            key = base.at(plane=base.plane if one_plane else plane, window=_in_plane(window, base.window))
            embedding = _lookup(key, store, memory)
            if embedding is None:
                if is_cancelled is not None and is_cancelled():
                    raise Cancelled(f"Embedding was cancelled after {done} of {total}.")
                if rgb is None:
                    data = image if one_plane or not plane else image[plane + (Ellipsis,)]
                    with warnings.catch_warnings():  # e.g. torch's note on read-only arrays: not for people
                        warnings.simplefilter("ignore", UserWarning)
                        rgb = np.asarray(data) if rgb_ready else as_rgb(np.asarray(data), channel_axis=channel_axis,
                                                                       channels=channels)
                crop = rgb if window is None else rgb[window[1]:window[3], window[0]:window[2]]
                embedding = replace(embed_image(model, np.ascontiguousarray(crop), precision=key.precision), key=key)
                _keep(embedding, store, memory)
            done += 1
            if progress is not None:
                progress(done, total)
            yield embedding


def _in_plane(window: Window | None, origin: Window | None) -> Window | None:
    """A window of an image that is itself the window ``origin`` of a plane, in plane pixels."""
    if origin is None:
        return window
    if window is None:
        return origin
    x0, y0 = origin[:2]
    return (window[0] + x0, window[1] + y0, window[2] + x0, window[3] + y0)


def _from_source(model, source, windows, store, cache, precision, progress, cancel, key) -> Iterator[ImageEmbedding]:
    """:func:`compute_embeddings` of windows of a :class:`~napari_sam.source.PlaneSource` (read one at a time)."""
    from .precision import resolve_precision

    h, w = source.shape
    window_list = [None] if windows is None else [None if win is None else _check_window(win, (h, w))
                                                  for win in windows]
    resolved = resolve_precision(precision, model.spec)
    if key is not None:  # (key.window: the source is that window of the plane, as for arrays)
        base = EmbeddingKey.create(key.image, model, resolved, plane=key.plane, window=key.window, view=key.view)
    else:
        base = EmbeddingKey.create(source.signature, model, resolved, view=source.view)
    if store is not None:
        store.bind(base)
    memory = cache if cache is not None else (store.cache if store is not None else None)
    return _iterate_source(model, source, base, window_list, store, memory, progress, _cancel_check(cancel))


def _iterate_source(model, source, base, windows, store, memory, progress, is_cancelled) -> Iterator[ImageEmbedding]:
    from .inference import embed_image

    for done, window in enumerate(windows):
        key = base.at(plane=base.plane, window=_in_plane(window, base.window))
        embedding = _lookup(key, store, memory)
        if embedding is None:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled(f"Embedding was cancelled after {done} of {len(windows)}.")
            if window is None and source.large:
                pixels = source.overview(model.spec.image_size)
            else:
                pixels = source.rgb(window)
            embedding = embed_image(model, np.ascontiguousarray(pixels), precision=key.precision)
            if window is None:  # an overview stands for the whole plane
                embedding = replace(embedding, original_size=source.shape)
            embedding = replace(embedding, key=key)
            _keep(embedding, store, memory)
        if progress is not None:
            progress(done + 1, len(windows))
        yield embedding


def _lookup(key: EmbeddingKey, store, memory) -> ImageEmbedding | None:
    """An embedding from memory, else from the store (then kept in memory too), else None."""
    embedding = memory.get(key) if memory is not None else None
    if embedding is None and store is not None:
        embedding = store.get(key)
        if embedding is not None and memory is not None:
            memory.put(key, embedding)
    return embedding


def _keep(embedding: ImageEmbedding, store, memory) -> None:
    """A computed embedding into the store (at once: a crash keeps it) and memory."""
    if store is not None:
        store.put(embedding)
    if memory is not None and (store is None or memory is not store.cache):
        memory.put(embedding.key, embedding)


def embed_one(model, image, **kwargs) -> ImageEmbedding:
    """The single embedding of a 2D image (or of one ``planes=[p]`` / ``windows=[w]``), via
    :func:`compute_embeddings`."""
    embeddings = list(compute_embeddings(model, image, **kwargs))
    if len(embeddings) != 1:
        raise ImageError(f"Expected one embedding, got {len(embeddings)}; give one plane and at most one window.")
    return embeddings[0]
