"""Simulated prompts, as in the Segment Anything paper's training (section 3 and appendix A).

All functions work on batches in the frame of the low-resolution logits
(``B x 256 x 256`` masks) and return coordinates in the encoder's input frame
(``scale = S / 256`` input pixels per low-res pixel), ready for the prompt encoder:

* :func:`noisy_boxes`: the object's box with each corner moved by Gaussian noise of
  ``noise`` times the box side (10 % in the paper), at most 20 input pixels;
* :func:`points_inside`: one point drawn uniformly inside each object;
* :func:`interior_points`: each object's most interior pixel (the maximum of its
  distance transform), the click a person makes; used for validation;
* :func:`correction_points`: one point drawn uniformly from the error region of
  the previous prediction: positive where the object was missed, negative where
  the mask spilled over (a padding point, label -1, when there is no error).
"""

from __future__ import annotations

import numpy as np
import torch

#: Largest corner jitter of a noisy box, in input pixels (the paper's 20 px at 1024).
MAX_BOX_NOISE = 20.0


def noisy_boxes(boxes: torch.Tensor, noise: float, generator: torch.Generator, limit: torch.Tensor) -> torch.Tensor:
    """``B x 4`` boxes with each coordinate moved by ``N(0, noise * side)`` (at most 20 px).

    Args:
        boxes: ``B x 4`` (x0, y0, x1, y1) in the input frame.
        noise: standard deviation as a fraction of the box's width (x) or height (y).
        limit: ``B x 2`` ``(w, h)`` of each image inside the input; boxes stay within it.
    """
    if noise <= 0:
        return boxes.clone()
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    jitter = torch.randn(boxes.shape, generator=generator) * noise * side
    jitter = jitter.clamp(-MAX_BOX_NOISE, MAX_BOX_NOISE)
    moved = boxes + jitter
    limit = torch.as_tensor(limit, dtype=moved.dtype).reshape(-1, 2)
    x = torch.minimum(moved[:, 0::2].clamp(min=0), limit[:, :1])
    y = torch.minimum(moved[:, 1::2].clamp(min=0), limit[:, 1:])
    lo = torch.stack([torch.minimum(x[:, 0], x[:, 1]), torch.minimum(y[:, 0], y[:, 1])], 1)
    hi = torch.stack([torch.maximum(x[:, 0], x[:, 1]), torch.maximum(y[:, 0], y[:, 1])], 1)
    hi = torch.maximum(hi, lo + 1.0)
    return torch.cat([lo, hi], 1)


def _pick(weights: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel per row of ``B x H x W`` non-negative weights, uniformly among the positive ones.

    Returns ``(xy, found)``: ``B x 2`` low-res pixel coordinates (column, row) and
    whether the row had any positive weight.
    """
    b, h, w = weights.shape
    flat = weights.reshape(b, -1).float()
    found = flat.sum(1) > 0
    scores = torch.rand(flat.shape, generator=generator) * (flat > 0)
    index = scores.argmax(1)
    return torch.stack([index % w, index // w], 1), found


def _to_input(xy: torch.Tensor, scale: float) -> torch.Tensor:
    """Low-res pixel indices -> input-frame coordinates of the pixel centres."""
    return (xy.float() + 0.5) * scale


def points_inside(targets: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``B x 1 x 2`` input-frame points, one uniformly inside each ``B x H x W`` target."""
    xy, _ = _pick(targets, generator)
    return _to_input(xy, scale)[:, None]


def interior_points(targets: torch.Tensor, scale: float) -> torch.Tensor:
    """``B x 1 x 2`` input-frame points at the maximum of each target's distance transform."""
    from scipy import ndimage

    out = torch.zeros(targets.shape[0], 1, 2)
    for k, mask in enumerate(targets.numpy().astype(bool)):
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
        out[k, 0] = torch.tensor([(col + 0.5) * scale, (row + 0.5) * scale])
    return out


def correction_points(
    predicted: torch.Tensor, targets: torch.Tensor, scale: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction click per object from the error region of the previous masks.

    Args:
        predicted: ``B x H x W`` bool masks of the previous prediction (low-res frame).
        targets: ``B x H x W`` ground truth (0 where padding).

    Returns:
        ``(coords, labels)``: ``B x 1 x 2`` input-frame points and ``B x 1`` labels,
        1 (missed foreground), 0 (false positive), or -1 (no error: a padding point
        the prompt encoder ignores).
    """
    truth = targets.bool()
    error = predicted ^ truth
    xy, found = _pick(error, generator)
    rows, cols = xy[:, 1], xy[:, 0]
    inside = truth[torch.arange(truth.shape[0]), rows, cols]
    labels = torch.where(found, inside.long(), torch.full_like(rows, -1))
    return _to_input(xy, scale)[:, None], labels[:, None]
