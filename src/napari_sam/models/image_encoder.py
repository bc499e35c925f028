"""The ViT image encoder of SAM (ViT-B, ViT-L, ViT-H).

A plain vision transformer on 16 x 16 patches (a 64 x 64 token grid for a 1024
input) in which most blocks attend within 14 x 14 windows and a few attend
globally, with decomposed relative position biases (ViTDet / MViTv2), followed by
a convolutional neck to 256 channels.

Attention runs through ``scaled_dot_product_attention``; the relative position
bias, which depends on the queries, is passed to it as an additive mask. Tokens
are kept channels-last (``B x H x W x C``) between blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImageError
from .common import LayerNorm2d, MLPBlock, linear, linear_residual

#: Attention with relative positions materialises a ``heads x queries x keys`` bias;
#: above this many bytes (ViT-B's global blocks need 805 MB per image) it is built
#: and used a band of query rows at a time, in one reused buffer. Bands much
#: smaller than ~1000 queries make the attention kernel measurably slower.
GLOBAL_BIAS_CHUNK_BYTES = 256 * 2**20


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``B x C_in x H x W -> B x H/p x W/p x D``."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def relative_position_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Embeddings of every (query, key) offset along one axis of a ``size``-long grid.

    Args:
        rel_pos: ``(2 * size - 1) x d`` learned embeddings, one per offset
            ``-(size - 1) .. size - 1``.
        size: number of query (= key) positions along the axis.

    Returns:
        ``size x size x d``; entry ``[i, j]`` is the embedding of offset ``i - j``.
    """
    if rel_pos.shape[0] != 2 * size - 1:
        raise ImageError(
            f"The relative position table has {rel_pos.shape[0]} entries but a grid of {size} "
            f"tokens needs {2 * size - 1}: give the encoder images of the size it was built for."
        )
    positions = torch.arange(size, device=rel_pos.device)
    offsets = positions[:, None] - positions[None, :] + (size - 1)
    return rel_pos[offsets]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    table_h: torch.Tensor,
    table_w: torch.Tensor,
    grid: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The additive attention bias of decomposed relative positions (MViTv2).

    ``bias[b, n, (i, j), (k, l)] = q[b, n, (i, j)] . (table_h[i, k] + table_w[j, l])``
    with the unscaled queries.

    Args:
        q: ``B x heads x (h * w) x d`` queries on an ``h x w`` grid of rows.
        table_h: ``h x H x d`` embeddings of the vertical offsets between each query
            row and each of the ``H`` key rows (rows of
            :func:`relative_position_table`).
        table_w: ``w x W x d`` embeddings of the horizontal offsets.
        grid: ``(h, w)`` of the queries.
        out: optional buffer of ``B * heads * h * w * H * W`` elements to write into.

    Returns:
        ``B x heads x (h * w) x (H * W)`` bias in the dtype of ``q``.
    """
    b, heads, _, d = q.shape
    h, w = grid
    q5 = q.reshape(b, heads, h, w, d)
    # einsum may return permuted layouts; contiguous (small) terms make the sum contiguous.
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q5, table_h.to(q.dtype)).contiguous().unsqueeze(-1)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q5, table_w.to(q.dtype)).contiguous().unsqueeze(-2)
    key_h, key_w = table_h.shape[1], table_w.shape[1]
    if out is None:
        bias = rel_h + rel_w
    else:
        bias = torch.add(rel_h, rel_w, out=out.view(b, heads, h, w, key_h, key_w))
    return bias.view(b, heads, h * w, key_h * key_w)


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, optionally within windows.

    Args:
        dim: token width.
        num_heads: number of heads (``dim`` must be divisible by it).
        qkv_bias: learn a bias for the query, key and value projections.
        use_rel_pos: add decomposed relative position biases.
        rel_pos_zero_init: start the relative position tables at zero (the only
            initialisation here; checkpoints overwrite them).
        input_size: ``(H, W)`` of the grid attended over (the window for windowed
            blocks); sizes the relative position tables.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Attention with relative positions needs input_size=(H, W).")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, window_size: int = 0, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``B x H x W x C -> B x H x W x C``; ``window_size > 0`` attends within windows.

        Windows tile the grid after padding it at the bottom and right to a multiple
        of ``window_size``. Padded tokens are zero before the projection, so they
        enter as keys and values with the projection's bias (as in the reference
        implementation); their outputs are dropped before the output projection.
        ``residual`` (``B x H x W x C``), if given, is added to the result (fused with
        the output projection where possible).
        """
        b, h, w, c = x.shape
        qkv = linear(x, self.qkv)
        if window_size > 0:
            q, k, v, padded = self._window_qkv(qkv, window_size)
            out = self._attend(q, k, v, (window_size, window_size))
            hp, wp = padded
            nh, nw = hp // window_size, wp // window_size
            out = out.view(b, nh, nw, self.num_heads, window_size, window_size, c // self.num_heads)
            out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c)[:, :h, :w]
        else:
            # One copy to contiguous heads: the attention kernel runs ~15% faster on them.
            qkv = qkv.view(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.contiguous().unbind(0)
            out = self._attend(q, k, v, (h, w))
            out = out.transpose(1, 2).reshape(b, h, w, c)
        if residual is None:
            return self.proj(out)
        return linear_residual(out.contiguous(), self.proj, residual)

    def _window_qkv(
        self, qkv: torch.Tensor, window_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Pad ``B x H x W x 3C`` and cut it into windows of ``B * nW x heads x ws^2 x d``."""
        b, h, w, c3 = qkv.shape
        hp = -(-h // window_size) * window_size
        wp = -(-w // window_size) * window_size
        if (hp, wp) != (h, w):
            padded = qkv.new_empty(b, hp, wp, c3)
            padded[:, :h, :w] = qkv
            fill = self.qkv.bias.to(qkv.dtype) if self.qkv.bias is not None else 0.0
            padded[:, h:] = fill
            padded[:, :h, w:] = fill
            qkv = padded
        nh, nw = hp // window_size, wp // window_size
        d = c3 // (3 * self.num_heads)
        windows = qkv.view(b, nh, window_size, nw, window_size, 3, self.num_heads, d)
        windows = windows.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(
            3, b * nh * nw, self.num_heads, window_size * window_size, d
        )
        q, k, v = windows.unbind(0)
        return q, k, v, (hp, wp)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Attention of ``B x heads x (h * w) x d`` queries on keys of the same grid."""
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v)
        h, w = grid
        table_h = relative_position_table(self.rel_pos_h, h)
        table_w = relative_position_table(self.rel_pos_w, w)
        bias_bytes = q.shape[0] * q.shape[1] * (h * w) ** 2 * q.element_size()
        if bias_bytes <= GLOBAL_BIAS_CHUNK_BYTES:
            bias = decomposed_rel_pos_bias(q, table_h, table_w, grid)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return _banded_attention(q, k, v, table_h, table_w, grid, bias_bytes)


def _banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table_h: torch.Tensor,
    table_w: torch.Tensor,
    grid: tuple[int, int],
    bias_bytes: int,
) -> torch.Tensor:
    """Global attention a band of grid rows at a time, so no bias exceeds the budget.

    Query rows are independent in attention, so the result equals one call with
    the whole bias. Without autograd the bands' biases share one buffer (a fresh
    multi-hundred-megabyte tensor per call costs more in page faults than the add).
    """
    h, w = grid
    b, heads, n, _ = q.shape
    rows = max(1, (h * GLOBAL_BIAS_CHUNK_BYTES) // bias_bytes)
    buffer = None if torch.is_grad_enabled() else q.new_empty(b * heads * rows * w * n)
    bands = []
    for top in range(0, h, rows):
        band = min(rows, h - top)
        q_band = q[:, :, top * w : (top + band) * w]
        out = None if buffer is None else buffer[: b * heads * band * w * n]
        bias = decomposed_rel_pos_bias(q_band, table_h[top : top + band], table_w, (band, w), out=out)
        bands.append(F.scaled_dot_product_attention(q_band, k, v, attn_mask=bias))
    return torch.cat(bands, dim=2)


class Block(nn.Module):
    """Pre-norm transformer block: (windowed) attention and MLP, each with a residual.

    ``B x H x W x C -> B x H x W x C``. ``window_size == 0`` means global attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), self.window_size, residual=x)
        return self.mlp(self.norm2(x), residual=x)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: ``B x in_chans x S x S -> B x out_chans x S/p x S/p``.

    With the defaults of the checkpoints (``img_size=1024``, ``patch_size=16``,
    ``out_chans=256``) that is ``B x 3 x 1024 x 1024 -> B x 256 x 64 x 64``. The
    constructor arguments and parameter names are those of Meta's
    ``segment_anything.modeling.ImageEncoderViT``.

    Args:
        img_size: input side ``S`` (inputs must have exactly this size).
        patch_size: patch side ``p``.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        out_chans: channels of the output embedding.
        qkv_bias: learn a bias for query, key and value projections.
        norm_layer: normalisation class of the blocks.
        act_layer: activation class of the MLPs.
        use_abs_pos: add a learned absolute position embedding.
        use_rel_pos: add decomposed relative position biases in attention.
        rel_pos_zero_init: start relative position tables at zero.
        window_size: side of the attention windows (0: all blocks global).
        global_attn_indexes: blocks that attend globally.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_chans x img_size x img_size`` normalised pixels -> the image embedding."""
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-2:] != (self.img_size, self.img_size):
            raise ImageError(
                f"The image encoder takes B x {self.in_chans} x {self.img_size} x {self.img_size} "
                f"tensors, got {tuple(x.shape)}: resize and pad the image first "
                "(napari_sam.preprocess.model_input)."
            )
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = x.contiguous()  # token-major rows: the fused residual kernels need them
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2)).contiguous()
