"""TinyViT: the image encoder of MobileSAM (``vit_t``) and LiteMedSAM (``lite_medsam``).

A convolutional stem and stage (MBConv blocks), then three stages of windowed
self-attention blocks with learned relative-offset biases, then a neck to 256
channels. Maps ``B x 3 x S x S`` to ``B x 256 x 64 x 64`` (``S`` = 1024 for
MobileSAM, 256 for LiteMedSAM, whose patch embedding is point-wise).

Parameter names follow the official state_dicts (``patch_embed.seq.0.c``,
``layers.N.blocks.M.attn.attention_biases``, ``neck.0`` ...), so both official
checkpoints load with ``strict=True``.

CPU speed, in inference (eval mode, gradients off), without changing any
parameter or state_dict key: feature maps stay channels-last throughout; every convolution's
BatchNorm is folded into a cached convolution weight and bias; convolution +
GELU, convolution + residual add, linear + GELU and linear + residual add run as fused oneDNN kernels
where this torch has them (checked once against the plain ops); attention goes
through ``scaled_dot_product_attention`` with the gathered bias cached as its mask.
Caches are keyed on the storage and version counter of the tensors they derive
from, so any weight change (in-place edits included) invalidates them; ``train()``,
``.to()`` and ``load_state_dict`` also clear them. With gradients on, or in training
mode, the plain differentiable ops run instead (BatchNorm as a module, bias gathered
in forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ImageError
from .common import LayerNorm2d

#: Official quirk: a PatchMerging into one of these widths keeps the resolution
#: (stride 1), so that the encoder output is 64 x 64 for a 1024 input.
_SAME_RESOLUTION_DIMS = (320, 448, 576)
#: Bytes of an MBConv's expanded activations processed at once (see :meth:`MBConv.forward`).
_STRIP_BYTES = 4 * 2**20

_fused_kernels: bool | None = None  # None: not probed yet (float32; False turns off all fusion)
_fused_bf16: bool | None = None  # the same kernels on bfloat16 tensors


def _fast_path(module: nn.Module) -> bool:
    """True in eval mode with gradients off: cached folded weights and fused kernels may be used."""
    return not module.training and not torch.is_grad_enabled()


def _probe_fused_kernels(dtype: torch.dtype, atol: float) -> bool:
    """Run each fused op once on ``dtype`` tensors and compare with the plain float32 ops."""
    try:
        ops = torch.ops.mkldnn
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 5, 5, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 4, 1, 1, generator=gen).to(dtype)
        b = torch.randn(4, generator=gen).to(dtype)
        # The first call may come from inside autocast: the float32 reference must stay float32.
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            conv_args = ([0, 0], [1, 1], [1, 1], 1)
            ref = F.conv2d(x.float(), w.float(), b.float())
            tokens, lin_w, x32 = x.permute(0, 2, 3, 1), w[:, :, 0, 0], x.float()
            checks = (
                (ops._convolution_pointwise(x, w, b, *conv_args, "gelu", [None], "none"), F.gelu(ref)),
                (ops._convolution_pointwise.binary(x, x, w, b, *conv_args, "add", None, None, [], None), ref + x32),
                (ops._linear_pointwise(tokens, lin_w, b, "gelu", [None], "none"), F.gelu(ref).permute(0, 2, 3, 1)),
                (ops._linear_pointwise.binary(tokens, tokens, lin_w, b, "add"), (ref + x32).permute(0, 2, 3, 1)),
            )
            return all(
                got.dtype == dtype and torch.allclose(got.float(), want, atol=atol, rtol=atol) for got, want in checks
            )
    except Exception:  # any failure (missing op, other schema, no oneDNN): use the plain ops
        return False


def fused_kernels_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused conv/linear + pointwise ops exist here for ``dtype`` tensors
    (float32 or bfloat16) and agree with the plain ops."""
    global _fused_kernels, _fused_bf16
    if _fused_kernels is None:
        _fused_kernels = _probe_fused_kernels(torch.float32, 1e-5)
    if not _fused_kernels or dtype == torch.float32:
        return bool(_fused_kernels)
    if dtype != torch.bfloat16:
        return False
    if _fused_bf16 is None:
        _fused_bf16 = _probe_fused_kernels(torch.bfloat16, 5e-2)
    return _fused_bf16


def _can_fuse(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and fused_kernels_available(x.dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """bfloat16 when autocast to bfloat16 is on for ``x``'s device, else ``x``'s dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
        return torch.bfloat16
    return x.dtype


class _CachingModule(nn.Module):
    """A module that caches tensors derived from its parameters, for inference.

    The cache is keyed on the storage and version counter of its source tensors, so
    any change to them (in-place edits included) invalidates it; ``train()``,
    ``.to()`` and ``load_state_dict`` clear it as well.
    """

    def __init__(self) -> None:
        super().__init__()
        # tag -> (key of the source tensors, cached tensors)
        self._cache: dict[object, tuple[tuple, tuple[torch.Tensor, ...]]] = {}
        self.register_load_state_dict_post_hook(_clear_cache_after_load)

    def _cached(
        self,
        sources: Sequence[torch.Tensor],
        compute: Callable[[], tuple[torch.Tensor, ...]],
        tag: object = None,
    ) -> tuple[torch.Tensor, ...]:
        """``compute()``, cached under ``tag`` until a tensor in ``sources`` changes."""
        try:
            key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        except RuntimeError:  # inference tensors have no version counter: do not cache
            return compute()
        entry = self._cache.get(tag)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = (key, compute())
            self._cache[tag] = entry
        return entry[1]

    def _cast(
        self, tensors: Sequence[torch.Tensor], dtype: torch.dtype, sources: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``tensors`` in ``dtype`` (cached copies when the dtype differs; keyed on ``sources``)."""
        if all(t.dtype == dtype for t in tensors):
            return tuple(tensors)
        return self._cached(tensors if sources is None else sources,
                            lambda: tuple(t.to(dtype) for t in tensors), tag=dtype)  # fmt: skip

    def _clear_cache(self) -> None:
        self._cache = {}

    def train(self, mode: bool = True) -> _CachingModule:
        self._clear_cache()
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to(), .float() ...
        self._clear_cache()
        return super()._apply(fn, recurse)


def _clear_cache_after_load(module: _CachingModule, incompatible_keys: object) -> None:
    module._clear_cache()


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class ConvBN(_CachingModule):
    """Conv2d without bias then BatchNorm2d (official ``Conv2d_BN``: children ``c`` and ``bn``).

    Maps ``B x in_chans x H x W`` to ``B x out_chans x H' x W'``; optionally adds a
    residual (same shape as the output) and applies GELU, in that order.
    """

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.c.weight * scale[:, None, None, None]
        return weight, bn.bias - bn.running_mean * scale

    def forward(
        self,
        x: torch.Tensor,
        gelu: bool = False,
        residual: torch.Tensor | None = None,
        padding: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``padding``: (rows, columns) instead of the convolution's own (fast path only)."""
        c, bn = self.c, self.bn
        if not _fast_path(self):
            y = bn(c(x))
        else:
            pad = tuple(c.padding) if padding is None else padding
            sources = (c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
            weight, bias = self._cast(self._cached(sources, self._folded), x.dtype, sources)
            if _can_fuse(x) and (gelu or residual is not None):
                fused = torch.ops.mkldnn._convolution_pointwise
                args = (weight, bias, list(pad), list(c.stride), list(c.dilation), c.groups)
                if residual is None:
                    return fused(x, *args, "gelu", [None], "none")
                y = fused.binary(x, residual, *args, "add", None, None, [], None)
                return F.gelu(y) if gelu else y
            y = F.conv2d(x, weight, bias, c.stride, pad, c.dilation, c.groups)
        if residual is not None:
            y = y + residual
        return F.gelu(y) if gelu else y


class PatchEmbed(nn.Module):
    """Two ConvBN with a GELU between: ``B x in_chans x S x S -> B x embed_dim x S/4 x S/4``.

    With ``pointwise=True`` (LiteMedSAM) the convolutions are 1x1 with stride 1 and
    the resolution stays ``S x S``; otherwise 3x3 with stride 2.
    """

    def __init__(self, in_chans: int, embed_dim: int, pointwise: bool = False) -> None:
        super().__init__()
        kernel, stride, pad = (1, 1, 0) if pointwise else (3, 2, 1)
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel, stride, pad),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel, stride, pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq[2](self.seq[0](x, gelu=True))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, add input, GELU.

    ``B x dim x H x W -> B x dim x H x W``.
    """

    def __init__(self, dim: int, expand_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path > 0:
            h = self.conv2(self.conv1(x, gelu=True), gelu=True)
            return F.gelu(x + _drop_path(self.conv3(h), self.drop_path, True))
        rows = self._strip_rows(x)
        if rows is None:
            h = self.conv2(self.conv1(x, gelu=True), gelu=True)
            return self.conv3(h, gelu=True, residual=x)
        return torch.cat([self._strip(x, start, min(start + rows, x.shape[2])) for start in range(0, x.shape[2], rows)],
                         dim=2)  # fmt: skip

    def _strip_rows(self, x: torch.Tensor) -> int | None:
        """Rows per strip when the expanded activations (``hidden`` channels) would not fit
        in the CPU's caches (LiteMedSAM's stage 0: 256 x 256 x 256 floats, 64 MB), else None.

        In strips of rows (4 MB of expanded activations: 16 rows there), each strip's
        expanded activations are still in cache when the depthwise and the projecting
        convolutions read them: one block of LiteMedSAM's stage 0 takes 0.087 s instead
        of 0.130 s on 2 cores (the whole encoder 0.85 s instead of 0.925 s), with
        bit-identical results (each output row needs its own row and one more on each
        side of the expanded map).
        """
        if not (_fast_path(self) and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last)):
            return None
        _, _, height, width = x.shape
        row_bytes = width * self.conv1.c.out_channels * x.element_size()
        rows = _STRIP_BYTES // max(1, row_bytes)
        return rows if 2 <= rows < height else None

    def _strip(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output rows ``start:stop`` of the block (exactly those of the whole-map computation)."""
        height = x.shape[2]
        lo, hi = max(0, start - 1), min(height, stop + 1)
        h = self.conv1(x[:, :, lo:hi], gelu=True)
        top, bottom = 1 - (start - lo), 1 - (hi - stop)  # zero rows where the map ends
        if top or bottom:
            h = F.pad(h, (0, 0, top, bottom))
        h = self.conv2(h, gelu=True, padding=(0, 1))
        return self.conv3(h, gelu=True, residual=x[:, :, start:stop])


class PatchMerging(nn.Module):
    """1x1 conv, GELU, 3x3 depthwise conv (stride 2, or 1 into widths 320/448/576), GELU, 1x1 conv.

    ``B x dim x H x W -> B x out_dim x H' x W'``.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        stride = 1 if out_dim in _SAME_RESOLUTION_DIMS else 2
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x, gelu=True), gelu=True))


class Attention(_CachingModule):
    """Multi-head self-attention within one window, with a learned bias per head and offset.

    ``B' x N x dim -> B' x N x dim`` with ``N = window_size**2`` tokens in row-major order.
    The bias of a query/key pair depends on their absolute row and column offsets
    ``(|dy|, |dx|)``, stored at column ``|dy| * window_size + |dx|`` of ``attention_biases``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # Index arithmetic in NumPy: on the CPU even when the module is built on the meta
        # device (the buffer is not in the state_dict, so nothing would fill it), and
        # without torch's thread pool, whose wake-ups cost milliseconds on a busy CPU.
        rows = np.repeat(np.arange(window_size), window_size)
        cols = np.tile(np.arange(window_size), window_size)
        idxs = np.abs(rows[:, None] - rows[None]) * window_size + np.abs(cols[:, None] - cols[None])
        self.register_buffer("attention_bias_idxs", torch.from_numpy(idxs.astype(np.int64)), persistent=False)

    def _gathered_bias(self) -> tuple[torch.Tensor]:
        """``1 x heads x N x N`` additive attention mask."""
        return (self.attention_biases[:, self.attention_bias_idxs].unsqueeze(0),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv_layer, proj_layer = self.qkv, self.proj
        params = (qkv_layer.weight, qkv_layer.bias, proj_layer.weight, proj_layer.bias)
        normed = self.norm(x)
        if _fast_path(self):
            sources = (self.attention_biases, self.attention_bias_idxs)
            (bias,) = self._cached(sources, self._gathered_bias)
            # Normalised tokens, weights and bias in the compute dtype (bfloat16 under
            # autocast, also when the residual stream ``x`` is float32), cast once.
            normed = normed.to(_compute_dtype(x))
            bias, qkv_w, qkv_b, proj_w, proj_b = self._cast((bias, *params), normed.dtype, sources + params)
        else:
            (bias,) = self._gathered_bias()
            qkv_w, qkv_b, proj_w, proj_b = params
        # Per head the official qkv output is laid out [q | k | v].
        qkv = F.linear(normed, qkv_w, qkv_b).view(batch, tokens, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return F.linear(out.transpose(1, 2).reshape(batch, tokens, dim), proj_w, proj_b)


class Mlp(_CachingModule):
    """LayerNorm, linear, GELU, linear: ``... x dim -> ... x dim``; plus ``residual`` if given."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        dtype = _compute_dtype(x)
        x = self.norm(x)
        if _fast_path(self):
            x = x.to(dtype)  # a float32 residual stream under bfloat16 autocast: compute in bfloat16
            params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
            w1, b1, w2, b2 = self._cast(params, x.dtype)
            if _can_fuse(x):
                linear = torch.ops.mkldnn._linear_pointwise
                h = linear(x, w1, b1, "gelu", [None], "none")
                if residual is None:
                    return F.linear(h, w2, b2)
                if residual.dtype != x.dtype:
                    return residual + F.linear(h, w2, b2)
                return linear.binary(h, residual, w2, b2, "add")
            out = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
            return out if residual is None else residual + out
        out = self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))
        return out if residual is None else residual + out


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), depthwise local conv, MLP (residual).

    ``B x H x W x dim -> B x H x W x dim`` (contiguous). The map is zero-padded at
    the bottom/right to whole windows for the attention, as in the official code.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float = 4.0, drop: float = 0.0,
        drop_path: float = 0.0, local_conv_size: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        self.window_size = window_size
        self.drop_path = drop_path
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        ws = self.window_size
        if height == ws and width == ws:
            return self.attn(x.view(batch, ws * ws, dim)).view(batch, ws, ws, dim)
        pad_b, pad_r = (ws - height % ws) % ws, (ws - width % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        n_h, n_w = (height + pad_b) // ws, (width + pad_r) // ws
        windows = x.view(batch, n_h, ws, n_w, ws, dim).transpose(2, 3).reshape(-1, ws * ws, dim)
        out = self.attn(windows).view(batch, n_h, n_w, ws, ws, dim).transpose(2, 3)
        return out.reshape(batch, n_h * ws, n_w * ws, dim)[:, :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _drop_path(self._windowed_attention(x), self.drop_path, self.training)
        # The local conv acts on the residual stream itself: keep a float32 stream float32.
        keep = _fast_path(self) and x.dtype == torch.float32 and _compute_dtype(x) != torch.float32
        with torch.autocast(x.device.type, enabled=False) if keep else contextlib.nullcontext():
            x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        if self.training and self.drop_path > 0:
            return x + _drop_path(self.mlp(x), self.drop_path, True)
        return self.mlp(x, residual=x)


class Stage(nn.Module):
    """Blocks, then an optional PatchMerging: ``B x C x H x W -> B x C' x H' x W'``.

    Official ``ConvLayer`` (stage 0, MBConv blocks on ``B x C x H x W``) and
    ``BasicLayer`` (stages 1-3, TinyViT blocks on ``B x H x W x C``: ``tokens=True``).
    """

    def __init__(
        self, blocks: list[nn.Module], downsample: nn.Module | None, tokens: bool, use_checkpoint: bool = False
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.tokens = tokens
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            x = x.permute(0, 2, 3, 1).contiguous()  # free for channels-last input
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.tokens:
            x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT image encoder with the SAM neck: ``B x in_chans x S x S -> B x 256 x 64 x 64``.

    ``S = img_size``. The arguments are those of MobileSAM's TinyViT plus
    ``pointwise_patch_embed`` (LiteMedSAM: 1x1 stride-1 patch embedding, so stage 0
    runs at ``S x S``). ``norm_head`` and ``head`` exist when ``num_classes > 0`` only
    so that MobileSAM's checkpoint loads strictly; they are not used.
    ``layer_lr_decay`` is accepted for signature compatibility (it only matters to
    the official training code) and stored.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_checkpoint: bool = False,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        layer_lr_decay: float = 1.0,
        pointwise_patch_embed: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.layer_lr_decay = layer_lr_decay
        #: Leading stages kept in float32 when the encoder runs in bfloat16.
        self.float32_stages = 1
        #: In bfloat16, keep the residual stream of the later stages (and their local
        #: convolutions, which act on it) in float32; matrix products run in bfloat16.
        self.float32_residual = True
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], pointwise_patch_embed)

        rates = iter(torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist())
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio, next(rates)) for _ in range(depth)]
            else:
                blocks = [
                    TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_ratio, drop_rate, next(rates), local_conv_size)
                    for _ in range(depth)
                ]
            downsample = PatchMerging(dim, embed_dims[i + 1]) if i < len(depths) - 1 else None
            self.layers.append(Stage(blocks, downsample, tokens=i > 0, use_checkpoint=use_checkpoint))

        if num_classes > 0:
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
        self.apply(_init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], 256, kernel_size=1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x in_chans x img_size x img_size`` image tensor -> ``B x 256 x 64 x 64`` embedding."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ImageError(
                f"TinyViT expects an input of shape B x {expected[0]} x {expected[1]} x {expected[2]}, "
                f"got {tuple(x.shape)}; resize and pad the image to {self.img_size} x {self.img_size} first."
            )
        x = x.contiguous(memory_format=torch.channels_last)
        dtype = _compute_dtype(x) if _fast_path(self) else x.dtype
        if dtype == torch.float32:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            return self.neck(x).contiguous()
        # Reduced precision (autocast to bfloat16): the patch embedding and the first
        # ``float32_stages`` stages stay float32 (the image and the full-resolution
        # stage are where bfloat16 rounding moves the masks; see napari_sam.precision);
        # then the attention and MLP matrix products run on bfloat16 copies of their
        # inputs and weights, fused kernels included, and add their outputs to a
        # float32 residual stream (``float32_residual``); the local convolutions and
        # patch merging, which act on the stream itself, stay float32. Embedding error
        # on immunohistochemistry crops 3.5e-2 -> 2.3e-2 (a bfloat16 patch merging
        # alone brings it back to 3.7e-2).
        with torch.autocast(x.device.type, enabled=False):
            x = self.patch_embed(x.float())
            for layer in self.layers[: self.float32_stages]:
                x = layer(x)
        for layer in self.layers[self.float32_stages :]:
            x = layer(x.float() if self.float32_residual else x.to(dtype))
        return self.neck(x).contiguous()


def _init_weights(module: nn.Module) -> None:
    """Initialisation of the official code (matters only when training from scratch)."""
    if isinstance(module, nn.Linear):
        # The official trunc_normal_(std=0.02) truncates at +-2, i.e. 100 std: a plain normal.
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, MBConv):
        nn.init.zeros_(module.conv3.bn.weight)
