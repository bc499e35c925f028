"""The two-way transformer of SAM's mask decoder.

Prompt tokens and image tokens attend to each other in turn: tokens to tokens,
tokens to image, an MLP on the tokens, image to tokens; then a final token-to-image
attention. Parameter names follow Meta's ``segment_anything.modeling.transformer``.

CPU speed, with the same results up to float rounding:

* The image side may have batch size 1 while the tokens have batch size ``B`` (one
  image, ``B`` prompts): the image tokens then broadcast until the first
  image-to-token attention makes them prompt-specific.
* What depends on the image alone (the image tokens, their positional encoding, the
  first block's key and value projections for the token-to-image attention and its
  query projection for the image-to-token attention) can be computed once per image
  with :meth:`TwoWayTransformer.prepare_image` and passed to every call.
* A prompt has few tokens (``N`` = 7 for a box) against 4096 image tokens, so
  attention between them is rearranged to never project the image tokens: the
  per-head projections are folded into the ``N`` tokens instead
  (``q . (W_k x) = (W_k^T q) . x``; ``W_o sum p W_v x = W_o W_v sum p x``), which
  needs a third to a half of the multiply-adds when ``heads * N`` is below the
  attention width.
"""

from __future__ import annotations

from typing import NamedTuple

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

    @property
    def head_dim(self) -> int:
        return self.internal_dim // self.num_heads

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``B x N x C -> B x heads x N x C/heads`` (a view)."""
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _recombine(self, x: torch.Tensor) -> torch.Tensor:
        """``B x heads x N x d -> B x N x heads*d`` then the output projection."""
        b, _, n, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, n, self.internal_dim))

    def _head_weights(self, layer: nn.Linear) -> torch.Tensor:
        """``heads x d x D``: the rows of ``layer``'s weight that make each head."""
        return layer.weight.view(self.num_heads, self.head_dim, -1)

    def folds_projections(self, tokens: int) -> bool:
        """Whether folding the projections into ``tokens`` tokens saves multiply-adds."""
        return self.num_heads * tokens < self.internal_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = _broadcast_batch(
            self._separate_heads(self.q_proj(q)),
            self._separate_heads(self.k_proj(k)),
            self._separate_heads(self.v_proj(v)),
        )
        return self._recombine(F.scaled_dot_product_attention(q, k, v))

    def project_image(self, k: torch.Tensor | None, v: torch.Tensor | None, q: torch.Tensor | None = None):
        """Per-head projections ``B x heads x HW x d`` of image tokens (None where not given)."""
        return tuple(
            None if x is None else self._separate_heads(layer(x))
            for x, layer in ((k, self.k_proj), (v, self.v_proj), (q, self.q_proj))
        )

    def tokens_to_image(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        projected: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Few query tokens ``B x N x D`` attend to image tokens ``B' x HW x D`` (``B'`` 1 or B).

        ``projected``: the key and value projections of ``k`` and ``v`` (from
        :meth:`project_image`), if already computed. Without them, and when the
        image tokens are per prompt, the projections are folded into the queries.
        Returns ``B x N x D``.
        """
        batch, tokens, _ = q.shape
        queries = self._separate_heads(self.q_proj(q))
        if projected is not None:
            keys, values = _broadcast_batch(*projected, queries)[:2]
            return self._recombine(F.scaled_dot_product_attention(queries, keys, values))
        if k.shape[0] != batch or not self.folds_projections(tokens):
            return self.forward(q, k, v)
        # logits = (q_h W_k,h) . x / sqrt(d); k_proj's bias adds a constant per query row.
        folded = torch.einsum("bhnd,hdc->bhnc", queries, self._head_weights(self.k_proj))
        mixed = F.scaled_dot_product_attention(
            folded.reshape(batch, 1, self.num_heads * tokens, -1),
            k.unsqueeze(1),
            v.unsqueeze(1),
            scale=self.head_dim**-0.5,
        )  # B x 1 x heads*N x D: attention-weighted image tokens, per head and query
        # The weights sum to 1, so v_proj's bias passes through unchanged.
        out = torch.einsum("bhnc,hdc->bhnd", mixed.view(batch, self.num_heads, tokens, -1),
                           self._head_weights(self.v_proj))  # fmt: skip
        out = out + self.v_proj.bias.view(1, self.num_heads, 1, self.head_dim)
        return self._recombine(out)

    def image_to_tokens(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        projected_q: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image tokens ``B' x HW x D`` (``B'`` 1 or B) attend to few tokens ``B x N x D``.

        ``projected_q``: the query projection of ``q`` (from :meth:`project_image`),
        if already computed. ``residual`` (``B' x HW x D``), if given, is added to the
        result (in the same kernel where the projections are folded). Returns ``B x HW x D``.
        """
        batch, tokens, _ = k.shape
        heads, d = self.num_heads, self.head_dim
        folds = self.folds_projections(tokens)
        if projected_q is None and (q.shape[0] != batch or not folds):
            out = self.forward(q, k, v)
            return out if residual is None else residual + out
        keys = self._separate_heads(self.k_proj(k))  # B x heads x N x d
        values = self._separate_heads(self.v_proj(v))
        if not folds:
            out = self._recombine(F.scaled_dot_product_attention(*_broadcast_batch(projected_q, keys, values)))
            return out if residual is None else residual + out
        scale = d**-0.5
        # Logits are laid out B x heads x N x HW: softmax over N then runs across
        # contiguous rows (over a last dimension of 7 it is ~15x slower).
        if projected_q is not None:  # 1 x heads x HW x d, shared by the B prompts
            # One matrix product for all prompts and heads: the keys as a block-diagonal
            # B x heads*N x heads*d matrix against the HW x heads*d projections
            # (broadcasting the projections to B would copy them B times).
            blocks = torch.einsum("bhnd,hg->bhngd", keys, torch.eye(heads, dtype=keys.dtype, device=keys.device))
            flat_q = projected_q.transpose(1, 2).reshape(-1, heads * d)  # HW x heads*d (a view)
            logits = torch.matmul(blocks.reshape(batch, heads * tokens, heads * d), flat_q.t()) * scale
        else:
            # logits = x . (W_q,h^T k_h) + b_q,h . k_h, without projecting the image tokens.
            folded = torch.einsum("bhnd,hdc->bhnc", keys, self._head_weights(self.q_proj)) * scale
            offset = torch.einsum("bhnd,hd->bhn", keys, self.q_proj.bias.view(heads, d)) * scale
            logits = torch.baddbmm(offset.reshape(batch, heads * tokens, 1),
                                   folded.reshape(batch, heads * tokens, -1), q.transpose(1, 2))  # fmt: skip
        weights = logits.view(batch, heads, tokens, -1).softmax(dim=2)
        # out = sum over heads and tokens of weight * (W_o,h v_h + b_o / heads): the weights
        # of each head sum to 1, so the output bias is spread over the heads' tokens.
        out_heads = self.out_proj.weight.view(-1, heads, d)  # D x heads x d
        mixed_values = torch.einsum("bhnd,chd->bhnc", values, out_heads) + self.out_proj.bias / heads
        weights = weights.view(batch, heads * tokens, -1).transpose(1, 2)  # B x HW x heads*N
        mixed_values = mixed_values.reshape(batch, heads * tokens, -1)
        if residual is None:
            return torch.bmm(weights, mixed_values)
        return torch.baddbmm(residual, weights, mixed_values)


class ImageContext(NamedTuple):
    """What the transformer needs from the image alone (see :meth:`TwoWayTransformer.prepare_image`).

    Attributes:
        keys: ``1 x HW x D`` image tokens (image embedding + dense prompt embedding).
        key_pe: ``1 x HW x D`` their positional encoding.
        first_keys, first_values: ``1 x heads x HW x d`` key and value projections of
            the first block's token-to-image attention.
        first_queries: ``1 x heads x HW x d`` query projection of the first block's
            image-to-token attention.
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    first_keys: torch.Tensor
    first_values: torch.Tensor
    first_queries: torch.Tensor


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

    def project_image(self, keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The image-only projections of this block (see :class:`ImageContext`)."""
        k = keys + key_pe
        first_keys, first_values, _ = self.cross_attn_token_to_image.project_image(k, keys)
        _, _, first_queries = self.cross_attn_image_to_token.project_image(None, None, k)
        return first_keys, first_values, first_queries

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        projected: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``projected``: this block's image projections from :meth:`project_image` of ``keys``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        k = keys + key_pe if projected is None else None
        attn_out = self.cross_attn_token_to_image.tokens_to_image(
            queries + query_pe, k, keys, None if projected is None else projected[:2]
        )
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))

        tokens = queries + query_pe
        keys = self.cross_attn_image_to_token.image_to_tokens(
            k, tokens, queries, None if projected is None else projected[2], residual=keys
        )
        return queries, self.norm4(keys)


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

    @staticmethod
    def _tokens(x: torch.Tensor) -> torch.Tensor:
        """``B x D x h x w -> B x hw x D``, contiguous (free for channels-last inputs)."""
        return x.flatten(2).transpose(1, 2).contiguous()

    def prepare_image(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> ImageContext:
        """The prompt-independent part of :meth:`forward` for one image.

        Args:
            image_embedding: ``1 x D x h x w`` (image embedding + dense prompt embedding).
            image_pe: ``1 x D x h x w`` positional encoding.

        Returns:
            An :class:`ImageContext` to pass to :meth:`forward` for any number of prompts.
        """
        keys, key_pe = self._tokens(image_embedding), self._tokens(image_pe)
        return ImageContext(keys, key_pe, *self.layers[0].project_image(keys, key_pe))

    def forward(
        self,
        image_embedding: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        point_embedding: torch.Tensor,
        context: ImageContext | None = None,
        num_outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks and the final token-to-image attention.

        Args:
            image_embedding: ``B x D x h x w`` (or ``1 x D x h x w``, shared by all
                prompts); may be None when ``context`` is given.
            image_pe: ``1 x D x h x w`` or ``B x D x h x w`` positional encoding (None
                with ``context``).
            point_embedding: ``B x N x D`` prompt tokens.
            context: :meth:`prepare_image` of the same (shared) image and encoding.
            num_outputs: return only the first this many tokens (the final attention,
                whose query rows are independent, then runs for them alone).

        Returns:
            ``(queries, keys)``: ``B x N x D`` processed tokens (``N = num_outputs`` if
            given) and ``B x hw x D`` processed image tokens.
        """
        projected = None
        if context is not None:
            keys, key_pe, projected = context.keys, context.key_pe, context[2:]
        else:
            # Token-major copies: every later op on the image tokens reads contiguous rows.
            keys, key_pe = self._tokens(image_embedding), self._tokens(image_pe)
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            queries, keys = layer(
                queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe,
                projected=projected if index == 0 else None,
            )  # fmt: skip
        if num_outputs is not None:
            queries, point_embedding = queries[:, :num_outputs], point_embedding[:, :num_outputs]
        attn_out = self.final_attn_token_to_image.tokens_to_image(queries + point_embedding, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn_out)
        batch = point_embedding.shape[0]
        if keys.shape[0] != batch:
            keys = keys.expand(batch, -1, -1)
        return queries, keys
