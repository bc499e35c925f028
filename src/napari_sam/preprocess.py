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

import numpy as np

from .errors import ImageError
from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

#: Percentiles used to scale non-8-bit images to 0-255.
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9


def _channels_last(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Return ``H x W x C``; reject stacks that are not 2D planes."""
    if image.ndim == 2:
        return image[..., None]
    if image.ndim == 3:
        if channel_axis is None:
            if image.shape[-1] in (3, 4):
                return image
            raise ImageError(
                f"Got an array of shape {image.shape}: this looks like a 3D stack, not a 2D image. "
                "Select one plane (e.g. image[z]), or pass channel_axis=<axis> if one axis holds channels."
            )
        try:
            return np.moveaxis(image, channel_axis, -1)
        except np.exceptions.AxisError:
            raise ImageError(
                f"channel_axis={channel_axis} does not exist for an image of shape {image.shape}."
            ) from None
    raise ImageError(
        f"Got an array with {image.ndim} dimensions (shape {image.shape}); a 2D image is expected "
        "(H x W, H x W x 3 RGB, or H x W x C with channel_axis). Select a plane of the stack first."
    )


def _scale_channel(channel: np.ndarray) -> np.ndarray:
    """Scale one channel of any dtype to float32 0-255 (see module docstring)."""
    values = channel.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(channel.shape, np.float32)
    if not finite.all():
        values = np.where(finite, values, values[finite].min())
    low, high = np.percentile(values, (LOW_PERCENTILE, HIGH_PERCENTILE))
    if high <= low:  # nearly constant: fall back to the full range
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(channel.shape, np.float32)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0).astype(np.float32)


def as_rgb(
    image: np.ndarray,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
) -> np.ndarray:
    """Convert a 2D image to ``H x W x 3`` RGB with values 0-255.

    Args:
        image: ``H x W``, ``H x W x 3|4``, or any 3D array with ``channel_axis``.
        channel_axis: axis of ``image`` that holds channels (default: last axis
            if it has 3 or 4 entries, else the image must be 2D).
        channels: indices of the channels to use (1 to 3 of them).

    Returns:
        ``uint8`` ``H x W x 3`` if the input was ``uint8`` (values untouched),
        else ``float32`` ``H x W x 3`` in [0, 255].

    Raises:
        ImageError: for stacks, empty images, and more than three channels
            without ``channels``.
    """
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
        hwc = hwc[..., channels]
    elif n_channels == 4 and channel_axis is None:
        hwc = hwc[..., :3]  # RGBA: drop alpha
    elif n_channels > 3:
        raise ImageError(
            f"The image has {n_channels} channels; choose up to three with channels=[...] "
            "(they become red, green and blue)."
        )

    if hwc.dtype == np.uint8:
        rgb = hwc
    elif hwc.dtype == bool:
        rgb = hwc.astype(np.uint8) * np.uint8(255)
    else:
        rgb = np.stack([_scale_channel(hwc[..., c]) for c in range(hwc.shape[-1])], axis=-1)

    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    elif rgb.shape[-1] == 2:
        rgb = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    return np.ascontiguousarray(rgb)


def resized_shape(original_size: tuple[int, int], target_length: int) -> tuple[int, int]:
    """``(h, w)`` after scaling the longest side of ``original_size`` to ``target_length``."""
    old_h, old_w = original_size
    scale = target_length / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


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
