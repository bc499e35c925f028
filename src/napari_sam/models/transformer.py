"""The two-way transformer of SAM's mask decoder.

Prompt tokens and image tokens attend to each other in turn: tokens to tokens,
tokens to image, an MLP on the tokens, image to tokens; then a final token-to-image
attention. Parameter names follow Meta's ``segment_anything.modeling.transformer``.

The image side may have batch size 1 while the tokens have batch size ``B`` (one
image, ``B`` prompts): the image tokens then broadcast until the first
image-to-token attention makes them prompt-specific, which saves the key and
value projections of ``B - 1`` identical copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


def _broadcast_batch(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Expand (without copying) tensors of batch size 1 to the largest batch size."""
    batch = max(t.shape[0] for t in tensors)
    return [t if t.shape[0] == batch else t.expand(batch, *t.shape[1:]) for t in tensors]


class Attention(nn.Module):
    """Multi-head attention whose projections may narrow the width by ``downsample_rate``.

    ``q: B x Nq x D``, ``k, v: B x Nk x D -> B x Nq x D`` (batch sizes of 1 broadcast).

    Args:
        embedding_dim: token width ``D``.
        num_heads: number of heads (must divide ``D / downsample_rate``).
        downsample_rate: ``D`` / internal width.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}.")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``B x N x C -> B x heads x N x C/heads`` (a view)."""
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = _broadcast_batch(
            self._separate_heads(self.q_proj(q)),
            self._separate_heads(self.k_proj(k)),
            self._separate_heads(self.v_proj(v)),
        )
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """One round of token/image attention: ``(queries B x N x D, keys B x HW x D)`` in and out.

    Args:
        embedding_dim: token width ``D``.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLP.
        activation: activation class of the token MLP.
        attention_downsample_rate: width reduction inside the cross attentions.
        skip_first_layer_pe: the first block's self-attention sees the tokens
            without their positional encoding and has no residual.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=queries + query_pe, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))

        attn_out = self.cross_attn_image_to_token(q=k, k=queries + query_pe, v=queries)
        keys = self.norm4(keys + attn_out)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Transformer between prompt tokens and image tokens.

    Args:
        depth: number of :class:`TwoWayAttentionBlock`.
        embedding_dim: token width ``D``.
        num_heads: attention heads (must divide ``D / attention_downsample_rate``).
        mlp_dim: hidden width of the token MLPs.
        activation: activation class of the token MLPs.
        attention_downsample_rate: width reduction inside the cross attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks and the final token-to-image attention.

        Args:
            image_embedding: ``B x D x h x w`` (or ``1 x D x h x w``, shared by all prompts).
            image_pe: ``1 x D x h x w`` or ``B x D x h x w`` positional encoding.
            point_embedding: ``B x N x D`` prompt tokens.

        Returns:
            ``(queries, keys)``: ``B x N x D`` processed tokens and ``B x hw x D``
            processed image tokens.
        """
        # Token-major copies (free for channels-last inputs such as get_dense_pe's):
        # every later op on the image tokens then reads contiguous rows.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
        attn_out = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        queries = self.norm_final_attn(queries + attn_out)
        batch = point_embedding.shape[0]
        if keys.shape[0] != batch:
            keys = keys.expand(batch, -1, -1)
        return queries, keys
