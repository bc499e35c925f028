"""SAM's mask decoder: image embedding + prompt embeddings -> mask logits and IoU.

Learned output tokens (one IoU token, ``num_multimask_outputs + 1`` mask tokens)
join the prompt tokens in a two-way transformer with the image tokens. The image
tokens are upsampled 4x; each mask token, through its own MLP, becomes the
weights of a per-pixel linear map of the upsampled features: that is its mask.
Parameter names follow Meta's ``segment_anything.modeling.mask_decoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PromptError
from .common import LayerNorm2d


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: ``... x in -> ... x out``.

    Args:
        input_dim: input width.
        hidden_dim: width of the hidden layers.
        output_dim: output width.
        num_layers: number of linear layers.
        sigmoid_output: apply a sigmoid to the output.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(widths[:-1], widths[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        x = self.layers[-1](x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predict masks and their quality from image and prompt embeddings.

    Args:
        transformer_dim: channel width ``D`` of the transformer (256).
        transformer: the :class:`~napari_sam.models.transformer.TwoWayTransformer`.
        num_multimask_outputs: masks predicted per prompt in multimask mode.
        activation: activation class of the upscaling convolutions.
        iou_head_depth: layers of the IoU prediction MLP.
        iou_head_hidden_dim: hidden width of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``B`` prompts on one image.

        Args:
            image_embeddings: ``1 x D x h x w`` (shared by all prompts) or ``B x D x h x w``.
            image_pe: ``1 x D x h x w`` positional encoding (``PromptEncoder.get_dense_pe``).
            sparse_prompt_embeddings: ``B x K x D``.
            dense_prompt_embeddings: ``B x D x h x w``.
            multimask_output: return the ``num_multimask_outputs`` ambiguity masks
                instead of the single-mask output.

        Returns:
            ``(masks, iou_pred)``: ``B x C x 4h x 4w`` mask logits and ``B x C``
            predicted IoU, ``C = num_multimask_outputs`` or 1.
        """
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, mask_slice
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_slice: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks and IoU of the mask tokens in ``mask_slice`` (all by default); see :meth:`forward`."""
        batch = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, batch):
            raise PromptError(
                f"{image_embeddings.shape[0]} image embeddings for {batch} prompts: decode the prompts "
                "of one image at a time (or give one embedding per prompt)."
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)

        # Without a mask input the dense embedding is one vector broadcast over the
        # batch: keep the image side at batch 1 and let the transformer broadcast it.
        dense = dense_prompt_embeddings
        if dense.shape[0] == 1 or dense.stride(0) == 0:
            dense = dense[:1]
        src = image_embeddings + dense
        _, channels, h, w = src.shape

        hs, keys = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(batch, channels, h, w))
        selected = range(self.num_mask_tokens)[mask_slice]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in selected], dim=1
        )
        b, c, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.flatten(2)).view(b, -1, uh, uw)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, mask_slice]
        return masks, iou_pred
