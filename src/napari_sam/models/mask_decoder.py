"""SAM's mask decoder: image embedding + prompt embeddings -> mask logits and IoU.

Learned output tokens (one IoU token, ``num_multimask_outputs + 1`` mask tokens)
join the prompt tokens in a two-way transformer with the image tokens. The image
tokens are upsampled 4x; each mask token, through its own MLP, becomes the
weights of a per-pixel linear map of the upsampled features: that is its mask.
Parameter names follow Meta's ``segment_anything.modeling.mask_decoder``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PromptError
from .common import LayerNorm2d
from .tiny_vit import fused_kernels_available
from .transformer import ImageContext

#: Bytes of upscaled features (``prompts x 16hw x D/8`` floats) computed at once.
_UPSCALE_BYTES = 64 * 2**20
#: Bytes of one prompt chunk's image tokens (``prompts x hw x D``): 2 prompts at 64 x 64 x 256
#: (measured on 2 cores: 4% faster than 4 prompts, 12% faster than 1).
_CHUNK_BYTES = 8 * 2**20


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

    def prepare_image(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> ImageContext:
        """The prompt-independent part of decoding, once per image (see :meth:`forward`).

        Args:
            image_embeddings: ``1 x D x h x w``.
            image_pe: ``1 x D x h x w`` positional encoding.
            dense_prompt_embeddings: ``1 x D x h x w`` or a broadcast view of one vector
                (the prompt encoder's embedding for "no mask input").

        Returns:
            An :class:`~napari_sam.models.transformer.ImageContext` valid for every
            prompt without a mask input on this image, for these weights.
        """
        src = image_embeddings[:1] + dense_prompt_embeddings[:1]
        return self.transformer.prepare_image(src, image_pe[:1])

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        context: ImageContext | None = None,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``B`` prompts on one image.

        Args:
            image_embeddings: ``1 x D x h x w`` (shared by all prompts) or ``B x D x h x w``.
            image_pe: ``1 x D x h x w`` positional encoding (``PromptEncoder.get_dense_pe``).
            sparse_prompt_embeddings: ``B x K x D``.
            dense_prompt_embeddings: ``B x D x h x w``.
            multimask_output: return the ``num_multimask_outputs`` ambiguity masks
                instead of the single-mask output.
            context: :meth:`prepare_image` of the same image, encoding and dense
                embedding (prompts without mask input), to skip recomputing it.
            min_iou: if given, prompts none of whose returned masks has a predicted
                IoU above it are not upscaled: their logits are ``-inf`` (for callers
                that drop those masks anyway, like the automatic generator).

        Returns:
            ``(masks, iou_pred)``: ``B x C x 4h x 4w`` mask logits and ``B x C``
            predicted IoU, ``C = num_multimask_outputs`` or 1.
        """
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, mask_slice, context, min_iou
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_slice: slice = slice(None),
        context: ImageContext | None = None,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks and IoU of the mask tokens in ``mask_slice`` (all by default); see :meth:`forward`.

        Prompts are decoded a few at a time (their image-token tensors then stay in
        the CPU's caches: about 25% faster for a batch of 64); the shared image side is
        prepared once for all of them.
        """
        batch = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, batch):
            raise PromptError(
                f"{image_embeddings.shape[0]} image embeddings for {batch} prompts: decode the prompts "
                "of one image at a time (or give one embedding per prompt)."
            )
        # Without a mask input the dense embedding is one vector broadcast over the
        # batch: keep the image side at batch 1 and let the transformer broadcast it.
        dense = dense_prompt_embeddings
        shared = image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
        if dense.shape[0] == 1 or dense.stride(0) == 0:
            dense = dense[:1]
        step = max(1, _CHUNK_BYTES // (image_embeddings[0].numel() * image_embeddings.element_size()))
        if context is None and shared and batch > step:
            context = self.prepare_image(image_embeddings, image_pe, dense)
        parts = []
        for start in range(0, batch, step):
            part = slice(start, start + step)
            parts.append(self._decode(
                image_embeddings if image_embeddings.shape[0] == 1 else image_embeddings[part],
                image_pe,
                sparse_prompt_embeddings[part],
                dense if dense.shape[0] == 1 else dense[part],
                mask_slice,
                context,
                min_iou,
            ))  # fmt: skip
        if len(parts) == 1:
            return parts[0]
        return torch.cat([masks for masks, _ in parts]), torch.cat([iou for _, iou in parts])

    def _decode(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense: torch.Tensor,
        mask_slice: slice,
        context: ImageContext | None,
        min_iou: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` for one chunk of prompts (``dense`` already at batch 1 if shared)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        _, _, h, w = image_embeddings.shape
        selected = range(self.num_mask_tokens)[mask_slice]
        # Only the IoU token and the selected mask tokens are read from the output.
        needed = 2 + max(selected)
        if context is not None:
            hs, keys = self.transformer(None, None, tokens, context=context, num_outputs=needed)
        else:
            hs, keys = self.transformer(image_embeddings + dense, image_pe, tokens, num_outputs=needed)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:, :]

        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in selected], dim=1
        )
        iou_pred = self.iou_prediction_head(iou_token_out)[:, mask_slice]
        wanted = None if min_iou is None else (iou_pred > min_iou).any(dim=1)
        if wanted is None or bool(wanted.all()):
            return self.upscale_masks(keys, hyper_in, (h, w)), iou_pred
        # The upscaling is about a third of a prompt's decoding: only for prompts with a mask to keep.
        masks = keys.new_full((batch, len(selected), 4 * h, 4 * w), float("-inf"))
        rows = wanted.nonzero().squeeze(1)
        if len(rows):
            masks[rows] = self.upscale_masks(keys[rows], hyper_in[rows], (h, w))
        return masks, iou_pred

    def upscale_masks(self, keys: torch.Tensor, hyper_in: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Image tokens ``B x hw x D`` and mask weights ``B x C x D/8`` -> logits ``B x C x 4h x 4w``.

        ``output_upscaling`` (two 2x2 stride-2 transposed convolutions) computed as
        two matrix products on the tokens: each token becomes its 2x2 then 4x4 block
        of output pixels, which are put in place only after the product with
        ``hyper_in`` (``C`` channels instead of ``D/8``). Runs a bounded number of
        prompts at a time.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        batch, tokens, dim = keys.shape
        h, w = grid
        c1, c2 = up1.out_channels, up2.out_channels
        # ConvTranspose2d weight: in x out x ky x kx -> (ky, kx, out) x in.
        w1 = up1.weight.permute(2, 3, 1, 0).reshape(4 * c1, dim)
        w2 = up2.weight.permute(2, 3, 1, 0).reshape(4 * c2, c1)
        b1, b2 = up1.bias.repeat(4), up2.bias.repeat(4)
        fuse_gelu = (type(act2) is nn.GELU and act2.approximate == "none" and keys.device.type == "cpu"
                     and not torch.is_grad_enabled())  # the fused kernel has no backward
        step = max(1, _UPSCALE_BYTES // (tokens * 16 * c2 * keys.element_size()))
        out = []
        for start in range(0, batch, step):
            x = F.linear(keys[start : start + step], w1, b1).view(-1, tokens * 4, c1)
            x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
            if fuse_gelu and x.dtype == w2.dtype == torch.float32 and fused_kernels_available():
                x = torch.ops.mkldnn._linear_pointwise(x, w2, b2, "gelu", [None], "none")
            else:
                x = act2(F.linear(x, w2, b2))
            out.append(torch.bmm(x.view(x.shape[0], tokens * 16, c2), hyper_in[start : start + step].transpose(1, 2)))
        masks = torch.cat(out) if len(out) > 1 else out[0]  # B x 16hw x C
        masks = masks.index_select(1, _pixel_order(h, w, masks.device))
        return masks.transpose(1, 2).reshape(batch, masks.shape[-1], 4 * h, 4 * w)


@functools.lru_cache(maxsize=8)
def _pixel_order(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Where each output pixel of :meth:`MaskDecoder.upscale_masks` is in the token-major order.

    Tokens come as ``(y, x, ky1, kx1, ky2, kx2)``; output row ``4y + 2ky1 + ky2``,
    column ``4x + 2kx1 + kx2``. A gather with this index is several times faster
    than the equivalent 8-dimensional permute. The cached index is built outside
    ``torch.inference_mode`` even when first asked for inside it, so that training
    after inference in one process can still save it for backward.
    """
    with torch.inference_mode(False):
        index = torch.arange(16 * h * w, device=device).view(h, w, 2, 2, 2, 2)
        return index.permute(0, 2, 4, 1, 3, 5).reshape(-1).contiguous()
