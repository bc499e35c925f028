"""Images as users have them -> the RGB image the models expect.

Two steps, both pure functions:

1. :func:`as_rgb` turns a 2D array (grayscale, RGB, RGBA, multi-channel, any dtype)
   into an ``H x W x 3`` RGB image with values in 0-255:

   * ``uint8`` images are used as they are (exactly what Meta's predictor sees);
   * ``bool`` images become 0 / 255;
   * every other dtype (``uint16``, ``int``, ``float`` of any range, negative values)
     is scaled per channel between its 0.1st and 99.9th percentile of the finite
     values and clipped, so a few hot pixels do not darken the whole image;
   * NaN and infinite values are set to the channel's lowest finite value; a
     constant channel (or one with no finite value) becomes 0;
   * one channel is repeated to gray RGB; two channels go to red and green;
     RGBA loses its alpha; more than three channels need ``channels=``.

2. :func:`model_input` resizes the longest side to the encoder's input size,
   normalises as the model was trained (ImageNet mean/std on 0-255 for SAM and
   MobileSAM; min-max to [0, 1] for LiteMedSAM) and zero-pads bottom and right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ImageError
from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

#: Percentiles used to scale non-8-bit images to 0-255.
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9


def check_plane(shape: Sequence[int], channel_axis: int | None) -> int | None:
    """The channel axis of a 2D image of ``shape`` (None for ``H x W``); reject stacks.

    Raises:
        ImageError: a 3D array without ``channel_axis`` whose last axis is not RGB(A), a
            ``channel_axis`` that does not exist, or more than three axes.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim == 2:
        return None
    if ndim == 3:
        if channel_axis is None:
            if shape[-1] in (3, 4):
                return 2
            raise ImageError(
                f"Got an array of shape {shape}: this looks like a 3D stack, not a 2D image. "
                "Select one plane (e.g. image[z]), or pass channel_axis=<axis> if one axis holds channels."
            )
        if not -3 <= int(channel_axis) < 3:
            raise ImageError(f"channel_axis={channel_axis} does not exist for an image of shape {shape}.")
        return int(channel_axis) % 3
    raise ImageError(
        f"Got an array with {ndim} dimensions (shape {shape}); a 2D image is expected "
        "(H x W, H x W x 3 RGB, or H x W x C with channel_axis). Select a plane of the stack first."
    )


def _channels_last(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Return ``H x W x C``; reject stacks that are not 2D planes."""
    axis = check_plane(image.shape, channel_axis)
    return image[..., None] if axis is None else np.moveaxis(image, axis, -1)


@dataclass(frozen=True)
class RgbScaling:
    """How each channel of a non-8-bit image maps to 0-255: ``low`` -> 0, ``high`` -> 255, clipped.

    Computed once per image (:meth:`of`: from every pixel, or from a strided sample
    of an image too large to read at once, see :mod:`napari_sam.source`), so that
    every window of one image is scaled alike. A channel with ``high <= low``
    (constant, or no finite value) becomes 0.

    Attributes:
        low, high: one value per channel (``C``).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def of(cls, hwc: np.ndarray) -> RgbScaling:
        """The scaling of ``H x W x C`` values (see the module docstring for the rule)."""
        low, high = [], []
        for c in range(hwc.shape[-1]):
            values = hwc[..., c].astype(np.float64, copy=False)
            finite = np.isfinite(values)
            if not finite.any():
                low.append(0.0), high.append(0.0)
                continue
            if not finite.all():
                values = np.where(finite, values, values[finite].min())
            lo, hi = np.percentile(values, (LOW_PERCENTILE, HIGH_PERCENTILE))
            if hi <= lo:  # nearly constant: fall back to the full range
                lo, hi = values.min(), values.max()
            low.append(float(lo)), high.append(float(hi))
        return cls(tuple(low), tuple(high))

    def apply(self, hwc: np.ndarray) -> np.ndarray:
        """``H x W x C`` values -> float32 ``H x W x C`` in [0, 255] (NaN and infinities -> 0)."""
        if hwc.shape[-1] != len(self.low):
            raise ImageError(f"This scaling is for {len(self.low)} channel(s); the pixels have {hwc.shape[-1]}.")
        out = np.empty(hwc.shape, np.float32)
        for c, (lo, hi) in enumerate(zip(self.low, self.high)):
            values = hwc[..., c].astype(np.float64, copy=False)
            if hi <= lo:
                out[..., c] = 0.0
                continue
            values = np.where(np.isfinite(values), values, lo)
            out[..., c] = np.clip((values - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
        return out


def needs_scaling(dtype) -> bool:
    """Whether pixels of ``dtype`` are scaled to 0-255 (all but ``uint8`` and ``bool``)."""
    return np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(bool))


def select_channels(image: np.ndarray, channel_axis: int | None = None,
                    channels: Sequence[int] | None = None) -> np.ndarray:
    """``H x W x C`` (C at most 3) of a 2D image, as :func:`as_rgb` picks its channels (no scaling)."""
    array = np.asarray(image)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise ImageError(f"Cannot segment an array of dtype {array.dtype}; give a numeric image.")
    if np.iscomplexobj(array):
        raise ImageError("Cannot segment a complex-valued image; take its magnitude (np.abs) first.")
    hwc = _channels_last(array, channel_axis)
    if hwc.shape[0] < 2 or hwc.shape[1] < 2:
        raise ImageError(f"The image of shape {array.shape} is too small to segment (need at least 2 x 2 pixels).")
    n_channels = hwc.shape[-1]
    if channels is not None:
        channels = list(channels)
        if not 1 <= len(channels) <= 3:
            raise ImageError(f"Choose one to three channels, got {len(channels)}.")
        bad = [c for c in channels if not -n_channels <= c < n_channels]
        if bad:
            raise ImageError(f"Channels {bad} do not exist; the image has {n_channels} channels.")
        return hwc[..., channels]
    if n_channels == 4 and channel_axis is None:
        return hwc[..., :3]  # RGBA: drop alpha
    if n_channels > 3:
        raise ImageError(
            f"The image has {n_channels} channels; choose up to three with channels=[...] "
            "(they become red, green and blue)."
        )
    return hwc


def as_rgb(
    image: np.ndarray,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    scaling: RgbScaling | None = None,
) -> np.ndarray:
    """Convert a 2D image to ``H x W x 3`` RGB with values 0-255.

    Args:
        image: ``H x W``, ``H x W x 3|4``, or any 3D array with ``channel_axis``.
        channel_axis: axis of ``image`` that holds channels (default: last axis
            if it has 3 or 4 entries, else the image must be 2D).
        channels: indices of the channels to use (1 to 3 of them).
        scaling: how to map a non-8-bit image to 0-255 (default: from ``image``
            itself, :meth:`RgbScaling.of`); give the whole image's scaling when
            ``image`` is a window of it (see :class:`napari_sam.source.PlaneSource`).

    Returns:
        ``uint8`` ``H x W x 3`` if the input was ``uint8`` (values untouched),
        else ``float32`` ``H x W x 3`` in [0, 255].

    Raises:
        ImageError: for stacks, empty images, and more than three channels
            without ``channels``.
    """
    hwc = select_channels(image, channel_axis, channels)
    if hwc.dtype == np.uint8:
        rgb = hwc
    elif hwc.dtype == bool:
        rgb = hwc.astype(np.uint8) * np.uint8(255)
    else:
        rgb = (scaling or RgbScaling.of(hwc)).apply(hwc)

    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    elif rgb.shape[-1] == 2:
        rgb = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    return np.ascontiguousarray(rgb)


def resized_shape(original_size: tuple[int, int], target_length: int) -> tuple[int, int]:
    """``(h, w)`` after scaling the longest side of ``original_size`` to ``target_length``."""
    old_h, old_w = original_size
    scale = target_length / max(old_h, old_w)
    # (at least one pixel: a 10 x 10000 strip is 0.256 px tall at 256; Meta's rounding gives 0)
    return max(1, int(old_h * scale + 0.5)), max(1, int(old_w * scale + 0.5))


def _resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of ``H x W x 3`` to ``size``; keeps the dtype.

    8-bit images go through Pillow's bilinear filter, as in Meta's predictor, so
    the encoder sees exactly the same input; float images through torch.
    """
    if rgb.shape[:2] == tuple(size):
        return rgb
    if rgb.dtype == np.uint8:
        from PIL import Image

        return np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def model_input(rgb: np.ndarray, spec: ModelSpec):
    """The encoder input for ``rgb`` (output of :func:`as_rgb`).

    Returns:
        ``(tensor, input_size)``: a float32 tensor ``1 x 3 x S x S`` with
        ``S = spec.image_size``, and ``input_size = (h, w)``, the size of the
        resized image inside the zero padding.
    """
    import torch
    import torch.nn.functional as F

    size = spec.image_size
    input_size = resized_shape(rgb.shape[:2], size)
    resized = _resize_rgb(rgb, input_size)
    tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    if spec.normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        tensor = (tensor - mean) / std
    elif spec.normalization == "minmax":
        low, high = tensor.min(), tensor.max()
        tensor = (tensor - low) / torch.clamp(high - low, min=1e-8)
    else:  # pragma: no cover - registry entries are fixed
        raise ValueError(f"Unknown normalization {spec.normalization!r}")
    h, w = input_size
    tensor = F.pad(tensor, (0, size - w, 0, size - h))
    return tensor[None].contiguous(), input_size
