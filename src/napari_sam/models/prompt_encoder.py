"""Prompt encoder: points, boxes and mask inputs to the decoder's embeddings.

Points and box corners become random-Fourier positional encodings plus a learned
embedding of their role (background point, foreground point, padding, top-left
or bottom-right corner): the *sparse* embeddings. A low-resolution mask input is
convolved down to the image embedding's grid: the *dense* embedding (a learned
constant when there is no mask).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PromptError
from .common import LayerNorm2d

#: Point labels understood by the encoder.
LABEL_PADDING, LABEL_BACKGROUND, LABEL_FOREGROUND = -1, 0, 1


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Tancik et al. 2020).

    A point ``(x, y)`` in ``[0, 1]^2`` maps to ``[sin(f), cos(f)]`` with
    ``f = 2 pi (2 (x, y) - 1) @ G`` and ``G`` a fixed ``2 x num_pos_feats`` Gaussian
    matrix (saved in checkpoints as ``positional_encoding_gaussian_matrix``).

    Args:
        num_pos_feats: number of frequencies; the encoding has twice as many channels.
        scale: standard deviation of ``G`` (``None`` or non-positive: 1).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``... x 2`` coordinates in ``[0, 1]`` -> ``... x 2F`` encodings."""
        phases = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        phases = (2 * math.pi) * phases
        return torch.cat([torch.sin(phases), torch.cos(phases)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encodings of the pixel centres of an ``h x w`` grid: ``2F x h x w``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode ``B x N x 2`` (x, y) pixel coordinates of an ``(H, W)`` image: ``B x N x 2F``."""
        h, w = image_size
        scale = torch.tensor([w, h], device=coords_input.device, dtype=coords_input.dtype)
        coords = coords_input / scale
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Embed prompts for :class:`~napari_sam.models.mask_decoder.MaskDecoder`.

    Constructor arguments and parameter names are those of Meta's
    ``segment_anything.modeling.PromptEncoder``.

    Args:
        embed_dim: width of the prompt embeddings (256 in all SAM models).
        image_embedding_size: ``(h, w)`` of the image embedding grid.
        input_image_size: ``(H, W)`` of the padded encoder input; point and box
            coordinates are pixels of this frame.
        mask_in_chans: hidden channels of the mask-input convolutions.
        activation: activation class of the mask-input convolutions.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # Background point, foreground point, box top-left corner, box bottom-right corner.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        # (matrix tensor, its version/storage/device/dtype, encoding); see get_dense_pe.
        self._dense_pe_cache: tuple[torch.Tensor, tuple, torch.Tensor] | None = None

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of every image-embedding cell: ``1 x embed_dim x h x w``.

        It depends only on the Gaussian matrix, and computing it (a million sines
        and cosines) costs several percent of a decoder call, so under
        ``torch.inference_mode`` the result is cached. The cache is keyed on the
        matrix tensor itself, its version counter (bumped by ``load_state_dict`` and
        any in-place change), storage, device and dtype, so it never outlives the
        weights. The cached tensor is shared: do not modify it in place.
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        if not torch.is_inference_mode_enabled() or matrix.is_inference():
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        key = (matrix._version, matrix.data_ptr(), matrix.device, matrix.dtype, self.image_embedding_size)
        cached = self._dense_pe_cache
        if cached is None or cached[0] is not matrix or cached[1] != key:
            cached = (matrix, key, self.pe_layer(self.image_embedding_size).unsqueeze(0))
            self._dense_pe_cache = cached
        return cached[2]

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``B x N x 2`` pixel coordinates and ``B x N`` labels -> ``B x N(+1) x embed_dim``.

        Coordinates are shifted by half a pixel to the pixel centre. With ``pad``
        a padding point (label -1) is appended, as the decoder was trained with one
        whenever no box is given.
        """
        points = points + 0.5
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), LABEL_PADDING)], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels.unsqueeze(-1)
        embedding = torch.where(labels == LABEL_PADDING, self.not_a_point_embed.weight, embedding)
        embedding = torch.where(labels == LABEL_BACKGROUND, embedding + self.point_embeddings[0].weight, embedding)
        return torch.where(labels == LABEL_FOREGROUND, embedding + self.point_embeddings[1].weight, embedding)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``B x 4`` (x0, y0, x1, y1) pixel boxes -> ``B x 2 x embed_dim`` corner embeddings."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_roles = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return embedding + corner_roles

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """``B x 1 x 4h x 4w`` mask logits -> ``B x embed_dim x h x w``."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _get_batch_size(
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        """The number of prompts ``B``, from the first prompt type given (1 if none)."""
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of ``B`` prompts.

        Args:
            points: ``(coords, labels)``: ``B x N x 2`` (x, y) in input-frame pixels and
                ``B x N`` labels (1 foreground, 0 background, -1 padding), or None.
            boxes: ``B x 4`` (x0, y0, x1, y1) in input-frame pixels, or None.
            masks: ``B x 1 x 4h x 4w`` low-resolution mask logits, or None.

        Returns:
            ``(sparse, dense)``: ``B x K x embed_dim`` with ``K`` = N (+1 padding point
            when there are points but no boxes) (+2 box corners), and
            ``B x embed_dim x h x w`` (a broadcast view of one learned vector when
            there is no mask).
        """
        batch = self._get_batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        parts = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            coords, labels = points
            if coords.shape[:2] != labels.shape or coords.shape[-1] != 2:
                raise PromptError(
                    f"Point coordinates {tuple(coords.shape)} and labels {tuple(labels.shape)} do not "
                    "match: give B x N x 2 coordinates and B x N labels."
                )
            parts.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            if boxes.numel() != 4 * batch:
                raise PromptError(
                    f"Got {tuple(boxes.shape)} boxes for {batch} prompts: give one (x0, y0, x1, y1) box per prompt."
                )
            parts.append(self._embed_boxes(boxes))
        sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
