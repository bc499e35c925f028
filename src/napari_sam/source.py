"""One 2D plane of an image, read a window at a time.

Slide scans, stitched mosaics and plate overviews are too large to turn into one
RGB array (a 20,000 x 20,000 RGB image is 1.2 GB as uint8, 4.8 GB as float), and
they often live on disk as zarr / OME-Zarr, a TIFF read lazily or a dask array.
:class:`PlaneSource` is how the predictor, the embedding entry point and the tiled
automatic segmentation get pixels of such a plane:

* :meth:`PlaneSource.rgb` reads only a window and makes it RGB 0-255 with the
  **whole plane's** scaling (:class:`~napari_sam.preprocess.RgbScaling`), so that
  every window of one image is scaled alike and an embedding of a window is the
  same whoever asks for it. Planes of at most :data:`SCALING_SAMPLE_PIXELS` are
  scaled from every pixel (exactly :func:`~napari_sam.preprocess.as_rgb` of the
  whole plane) and kept in memory as RGB; larger ones from a strided sample of
  about that many pixels, and are never read whole.
* :meth:`PlaneSource.overview` is the whole plane at a coarse resolution, for the
  whole-image embedding (the coarse view of prompts too large for a tile): a
  pyramid level when the image has one (napari multiscale layers, OME-Zarr), else
  an area-averaged reduction streamed over bands of rows.

Coordinates are pixels of the full-resolution plane; windows are
``(x0, y0, x1, y1)`` with ends exclusive.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from .errors import ImageError
from .preprocess import RgbScaling, as_rgb, check_plane, needs_scaling, select_channels

Window = tuple[int, int, int, int]

#: Planes with at most this many pixels are read whole (and scaled from every pixel);
#: larger planes are read window by window, scaled from a sample of about this many.
SCALING_SAMPLE_PIXELS = 4096 * 4096
#: Bytes of raw pixels read at once while an overview is reduced.
_BAND_BYTES = 64 * 2**20


def is_large(shape: Sequence[int]) -> bool:
    """Whether a plane of ``(H, W)`` is read window by window (more than :data:`SCALING_SAMPLE_PIXELS`)."""
    return int(shape[0]) * int(shape[1]) > SCALING_SAMPLE_PIXELS


class PlaneSource:
    """A 2D plane of any array-like, read window by window as RGB (see the module docstring).

    Args:
        data: ``H x W``, ``H x W x C`` or (with ``channel_axis``) channels on any axis:
            numpy, dask, zarr, a TIFF opened with ``tifffile.imread(path, aszarr=True)``,
            or the list of levels of a multiscale pyramid (full resolution first).
        channel_axis: axis of ``data`` that holds channels (default: the last axis if it
            has 3 or 4 entries and ``data`` has 3 axes).
        channels: the channels to use (1 to 3; see :func:`~napari_sam.preprocess.as_rgb`).
        rgb_ready: ``data`` is already the ``H x W x 3`` output of ``as_rgb``.
        signature: the image's :func:`~napari_sam.embedding.image_signature`, when
            known (computed on first use otherwise).
        scaling: the plane's :attr:`scaling`, when known (a Dask worker gets the one the
            client computed instead of sampling the image again).

    Thread-safe: the annotator reads windows in a worker while it previews.
    """

    def __init__(
        self,
        data,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        *,
        rgb_ready: bool = False,
        signature: str | None = None,
        scaling: RgbScaling | None = None,
    ) -> None:
        levels = list(data) if isinstance(data, (list, tuple)) else [data]
        if not levels or any(not hasattr(level, "shape") for level in levels):
            raise ImageError("A plane is an array (numpy, dask, zarr) or a list of pyramid levels of one.")
        self.data = levels[0]
        self.levels = levels
        ndim = len(self.data.shape)
        if rgb_ready:
            channel_axis, channels = None, None
        self._given_channel_axis = channel_axis
        channel_axis = check_plane(self.data.shape, channel_axis)
        self.channel_axis = channel_axis
        self.channels = None if channels is None else [int(c) for c in channels]
        self.rgb_ready = rgb_ready
        spatial = [a for a in range(ndim) if a != channel_axis]
        self._spatial = spatial
        self.shape: tuple[int, int] = (int(self.data.shape[spatial[0]]), int(self.data.shape[spatial[1]]))
        if self.shape[0] < 2 or self.shape[1] < 2:
            raise ImageError(f"The image of shape {tuple(self.data.shape)} is too small to segment (need at least "
                             "2 x 2 pixels).")
        self._signature = signature
        self._scaling: RgbScaling | None = scaling
        self._whole: np.ndarray | None = None
        self._lock = threading.Lock()
        self.inverted_levels = False

    @classmethod
    def of(cls, image, channel_axis: int | None = None, channels: Sequence[int] | None = None,
           rgb_ready: bool = False) -> PlaneSource:
        """``image`` itself when it is a :class:`PlaneSource`, else a new one of it."""
        if isinstance(image, PlaneSource):
            return image
        return cls(image, channel_axis, channels, rgb_ready=rgb_ready)

    # ------------------------------------------------------------------ identity

    @property
    def large(self) -> bool:
        """Read window by window (see :func:`is_large`)."""
        return is_large(self.shape)

    @property
    def signature(self) -> str:
        """:func:`~napari_sam.embedding.image_signature` of the full-resolution data (computed once)."""
        if self._signature is None:
            from .embedding import image_signature

            self._signature = image_signature(self.data)
        return self._signature

    @property
    def view(self) -> str:
        """:func:`~napari_sam.embedding.plane_view` of how this plane is made RGB (the arguments given)."""
        from .embedding import inverted_view, plane_view

        view = plane_view(channel_axis=self._given_channel_axis, channels=self.channels)
        return inverted_view(view) if self.inverted_levels else view

    def inverted(self) -> PlaneSource:
        """The same plane with its RGB levels inverted (255 - v), read from the same data with the same
        scaling and signature (its :attr:`view` says so, so embeddings of it have keys of their own)."""
        import copy

        self.scaling  # noqa: B018 - sampled once, shared
        twin = copy.copy(self)
        twin._lock = threading.Lock()
        twin._whole = None
        twin.inverted_levels = not self.inverted_levels
        return twin

    def _levels(self, rgb: np.ndarray) -> np.ndarray:
        if not self.inverted_levels:
            return rgb
        return (255 - rgb) if rgb.dtype == np.uint8 else (255.0 - rgb).astype(rgb.dtype, copy=False)

    # ------------------------------------------------------------------ reading

    def _index(self, window: Window | None, step: int = 1) -> tuple:
        index: list = [slice(None)] * len(self.data.shape)
        if window is not None:
            x0, y0, x1, y1 = window
            index[self._spatial[0]] = slice(y0, y1, step if step > 1 else None)
            index[self._spatial[1]] = slice(x0, x1, step if step > 1 else None)
        elif step > 1:
            index[self._spatial[0]] = slice(None, None, step)
            index[self._spatial[1]] = slice(None, None, step)
        return tuple(index)

    def _raw(self, window: Window | None = None, step: int = 1) -> np.ndarray:
        """``h x w x C`` raw pixels (channels chosen, not scaled)."""
        data = np.asarray(self.data[self._index(window, step)])
        if self.rgb_ready:
            return data
        return select_channels(data, self._given_channel_axis, self.channels)

    @property
    def scaling(self) -> RgbScaling | None:
        """The whole plane's :class:`~napari_sam.preprocess.RgbScaling` (None for uint8 and bool pixels)."""
        if self.rgb_ready or not needs_scaling(self.data.dtype):
            return None
        with self._lock:
            if self._scaling is None:
                h, w = self.shape
                step = max(1, math.ceil(math.sqrt(h * w / SCALING_SAMPLE_PIXELS)))
                self._scaling = RgbScaling.of(self._raw(step=step))
            return self._scaling

    def _check(self, window: Window) -> Window:
        x0, y0, x1, y1 = (int(v) for v in window)
        h, w = self.shape
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ImageError(f"Window {(x0, y0, x1, y1)} is not inside the {w} x {h} plane.")
        return x0, y0, x1, y1

    def rgb(self, window: Window | None = None) -> np.ndarray:
        """``h x w x 3`` RGB 0-255 of ``window`` (None: the whole plane), as ``as_rgb`` of the whole
        plane would give it there (uint8 for uint8 images, else float32)."""
        if window is not None:
            window = self._check(window)
            if window == (0, 0, self.shape[1], self.shape[0]):
                window = None
        if not self.large:
            whole = self._whole_rgb()
            if window is None:
                return whole
            x0, y0, x1, y1 = window
            return whole[y0:y1, x0:x1]
        if window is None:
            h, w = self.shape
            raise ImageError(f"The {w} x {h} plane is too large to read as one RGB array; read windows of it "
                             "(PlaneSource.rgb(window)) or its overview.")
        return self._to_rgb(self._raw(window))

    def _to_rgb(self, hwc: np.ndarray) -> np.ndarray:
        """Raw ``h x w x C`` pixels -> RGB 0-255 with the whole plane's scaling."""
        if self.rgb_ready:
            return self._levels(np.ascontiguousarray(hwc))
        return self._levels(as_rgb(hwc, channel_axis=2, scaling=self.scaling))

    def _whole_rgb(self) -> np.ndarray:
        with self._lock:
            if self._whole is None:
                data = np.asarray(self.data)
                if self.rgb_ready:
                    self._whole = self._levels(data)
                else:
                    self._whole = self._levels(as_rgb(data, channel_axis=self._given_channel_axis,
                                                      channels=self.channels))
            return self._whole

    def overview(self, side: int) -> np.ndarray:
        """The whole plane as RGB with its longest side at least ``side`` pixels (and at most about
        twice that), for the whole-image embedding of a large plane.

        A small plane is returned whole. A large one comes from the coarsest pyramid
        level that is large enough (the full resolution when there is no pyramid),
        reduced by averaging blocks of pixels, a band of rows at a time, when that
        level is itself large.
        """
        if not self.large:
            return self.rgb()
        for level in reversed(self.levels):  # the coarsest level large enough, then reduced if need be
            source = self if level is self.data else PlaneSource(level, self._given_channel_axis, self.channels,
                                                                  rgb_ready=self.rgb_ready, scaling=self.scaling)
            if source is not self and self.inverted_levels:
                source = source.inverted()
            if max(source.shape) >= side:
                if not source.large:
                    return source._to_rgb(source._raw(None))
                return source._reduced(max(1, int(max(source.shape) // side)))
        return self._reduced(1)

    def _reduced(self, factor: int) -> np.ndarray:
        """The plane averaged over ``factor x factor`` blocks (the last partial blocks dropped), RGB 0-255
        (uint8 for uint8 images, else float32), read a band of rows at a time."""
        h, w = self.shape
        oh, ow = h // factor, w // factor
        channels = 1 if len(self.data.shape) == 2 else int(self.data.shape[self.channel_axis])
        row_bytes = w * np.dtype(self.data.dtype).itemsize * channels
        band = max(1, _BAND_BYTES // (row_bytes * factor)) * factor
        out = np.empty((oh, ow, 3), np.float32)
        for y0 in range(0, oh * factor, band):
            y1 = min(y0 + band, oh * factor)
            rgb = self._to_rgb(self._raw((0, y0, ow * factor, y1))).astype(np.float32, copy=False)
            out[y0 // factor:y1 // factor] = rgb.reshape((y1 - y0) // factor, factor, ow, factor, 3).mean(axis=(1, 3))
        if self.data.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out
