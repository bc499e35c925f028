"""Zero-shot edge detection from "segment everything" masks (SAM paper, section 7.2).

Each mask's un-thresholded probability map (sigmoid of its upsampled logits) is
Sobel-filtered; the edge strength of a pixel is the largest gradient magnitude over
all masks; edges are thinned by non-maximum suppression along the gradient
direction and scaled to [0, 1].

The generator keeps each mask's low-resolution logits (``256 x 256`` float32,
256 KiB) rather than a full-resolution map: :class:`MaskLogits` upsamples them on
demand, a few masks at a time, so memory stays bounded for large images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SamkitError

#: Bytes of float32 maps processed at once by :func:`edge_map`.
_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MaskLogits:
    """A mask's low-resolution logits and the geometry to put them on the image.

    Attributes:
        low_res: ``256 x 256`` float32 decoder logits.
        image_size: side of the square encoder input.
        input_size: ``(h, w)`` of the resized crop inside the encoder input.
        crop_box: ``(x0, y0, x1, y1)`` of the crop in the image.
        image_shape: ``(H, W)`` of the whole image.
    """

    low_res: np.ndarray
    image_size: int
    input_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    image_shape: tuple[int, int]

    @property
    def crop_shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.crop_box
        return (y1 - y0, x1 - x0)

    def crop_logits(self) -> torch.Tensor:
        """Logits over the crop, ``h x w`` float32 (the same maths as the generator)."""
        return upsample_logits(torch.from_numpy(self.low_res)[None, None], self)[0, 0]

    def probability(self) -> np.ndarray:
        """``H x W`` float32 sigmoid of the logits; 0 outside the crop."""
        full = np.zeros(self.image_shape, dtype=np.float32)
        x0, y0, x1, y1 = self.crop_box
        full[y0:y1, x0:x1] = torch.sigmoid(self.crop_logits()).numpy()
        return full


def upsample_logits(low_res: torch.Tensor, geometry: MaskLogits) -> torch.Tensor:
    """``B x C x 256 x 256`` -> ``B x C x h x w`` over the crop (as :func:`napari_sam.inference.logits_to_image`)."""
    size = geometry.image_size
    logits = low_res.float()
    if logits.shape[-1] != size:
        logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    h, w = geometry.input_size
    return F.interpolate(logits[..., :h, :w], geometry.crop_shape, mode="bilinear", align_corners=False)


def _sobel(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``N x h x w`` -> ``(gx, gy)`` Sobel derivatives (kernels divided by 8: units per pixel).

    Borders are replicated, so a crop's edge adds no artificial step.
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    kernels = torch.stack([kx, kx.T])[:, None]  # 2 x 1 x 3 x 3
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, kernels.to(maps))
    return grads[:, 0], grads[:, 1]


def _probability_chunks(items: Sequence, shape: tuple[int, int]) -> Iterator[tuple[torch.Tensor, tuple]]:
    """Yield ``(probabilities n x h x w, crop_box)`` a few maps at a time."""
    arrays = [item for item in items if not isinstance(item, MaskLogits)]
    logits = [item for item in items if isinstance(item, MaskLogits)]
    h, w = shape
    per_chunk = max(1, _CHUNK_BYTES // (4 * 4 * h * w))
    for start in range(0, len(arrays), per_chunk):
        stack = np.stack([np.asarray(a, dtype=np.float32) for a in arrays[start : start + per_chunk]])
        yield torch.from_numpy(stack), (0, 0, w, h)
    # Group logits by crop, then upsample a chunk of each group in one call.
    groups: dict[tuple, list[MaskLogits]] = {}
    for item in logits:
        groups.setdefault((item.crop_box, item.input_size, item.image_size), []).append(item)
    for members in groups.values():
        ch, cw = members[0].crop_shape
        per = max(1, _CHUNK_BYTES // (4 * 4 * max(ch * cw, members[0].image_size**2)))
        for start in range(0, len(members), per):
            part = members[start : start + per]
            low = torch.from_numpy(np.stack([m.low_res for m in part]))[:, None]
            yield torch.sigmoid(upsample_logits(low, part[0])[:, 0]), part[0].crop_box


def _thin(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Non-maximum suppression along the gradient direction (4 quantised directions).

    A pixel survives if its magnitude is at least that of both neighbours along
    its gradient direction.
    """
    padded = F.pad(magnitude[None, None], (1, 1, 1, 1), mode="constant", value=0.0)[0, 0]
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = torch.zeros_like(magnitude, dtype=torch.int64)  # 0: horizontal gradient
    sector[(angle >= 22.5) & (angle < 67.5)] = 1  # gradient along +x +y (image rows go down)
    sector[(angle >= 67.5) & (angle < 112.5)] = 2  # vertical gradient
    sector[(angle >= 112.5) & (angle < 157.5)] = 3
    neighbours = (
        ((0, -1), (0, 1)),
        ((-1, -1), (1, 1)),
        ((-1, 0), (1, 0)),
        ((-1, 1), (1, -1)),
    )
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (a, b) in enumerate(neighbours):
        is_max = (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
        keep |= (sector == index) & is_max
    return torch.where(keep, magnitude, torch.zeros_like(magnitude))


def edge_map(
    records_or_probability_maps: Sequence[dict] | Sequence[np.ndarray] | np.ndarray,
    shape: tuple[int, int] | None = None,
    thin: bool = True,
    normalize: bool = True,
) -> np.ndarray:
    """Edge strength from mask probability maps (the SAM paper's zero-shot edges).

    Args:
        records_or_probability_maps: records of
            :func:`~napari_sam.automatic.generate_masks` made with
            ``return_logits=True`` (their ``"logits"`` entries are used), or
            probability maps ``N x H x W`` in [0, 1] (an array or a sequence).
        shape: ``(H, W)``; needed only when there are no maps.
        thin: thin edges to one pixel by non-maximum suppression along the
            gradient direction.
        normalize: divide by the largest value so the strongest edge is 1.
            Without it, values are Sobel magnitudes of probabilities per pixel
            (a sharp 0 -> 1 step gives 0.5).

    Returns:
        ``H x W`` float32 edge strength in [0, 1] (zeros if there are no masks).
    """
    maps: list = []
    for item in records_or_probability_maps:
        if isinstance(item, dict):
            if "logits" not in item:
                raise SamkitError(
                    "This mask record has no 'logits': call generate_masks(..., return_logits=True) "
                    "to compute edges, or pass probability maps."
                )
            maps.append(item["logits"])
        else:
            maps.append(item)
    if maps:
        first = maps[0]
        found = first.image_shape if isinstance(first, MaskLogits) else tuple(np.shape(first))
        shape = tuple(found) if shape is None else tuple(shape)
    if shape is None:
        raise SamkitError("No masks and no shape: pass shape=(H, W) to edge_map.")
    h, w = shape
    best = torch.zeros((h, w), dtype=torch.float32)
    best_gx = torch.zeros((h, w), dtype=torch.float32)
    best_gy = torch.zeros((h, w), dtype=torch.float32)
    for probabilities, (x0, y0, x1, y1) in _probability_chunks(maps, (h, w)):
        if probabilities.shape[-2:] != (y1 - y0, x1 - x0):
            raise SamkitError(
                f"Probability maps of shape {tuple(probabilities.shape[-2:])} do not match the image shape {(h, w)}."
            )
        gx, gy = _sobel(probabilities.float())
        magnitude = torch.hypot(gx, gy)
        top, index = magnitude.max(dim=0)
        gx_top = gx.gather(0, index[None])[0]
        gy_top = gy.gather(0, index[None])[0]
        region = (slice(y0, y1), slice(x0, x1))
        better = top > best[region]
        best[region] = torch.where(better, top, best[region])
        best_gx[region] = torch.where(better, gx_top, best_gx[region])
        best_gy[region] = torch.where(better, gy_top, best_gy[region])
    edges = _thin(best, best_gx, best_gy) if thin else best
    if normalize:
        peak = edges.max()
        if peak > 0:
            edges = edges / peak
    return edges.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
