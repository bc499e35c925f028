"""Small building blocks shared by the encoder, the transformer and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fused_linear_available(x: torch.Tensor) -> bool:
    """Whether ``x`` may go through oneDNN's fused linear + GELU / + residual kernels:
    inference (no autograd) on a float32 or bfloat16 CPU tensor where they were
    checked against the plain ops (see :func:`napari_sam.models.tiny_vit.fused_kernels_available`).
    Not under autocast: these kernels would bypass it and run in the tensors' dtype."""
    if torch.is_grad_enabled() or x.device.type != "cpu" or not x.is_contiguous():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    from .tiny_vit import _can_fuse  # imported here: tiny_vit imports this module

    return _can_fuse(x)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``; through oneDNN where possible (adds the bias in the kernel, not by a copy)."""
    if fused_linear_available(x) and x.dtype == layer.weight.dtype and layer.bias is not None:
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [None], "none")
    return layer(x)


def linear_residual(x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + layer(x)``, in one fused kernel where possible (same shapes but the last dim)."""
    if (
        fused_linear_available(x) and residual.is_contiguous() and residual.dtype == x.dtype == layer.weight.dtype
        and layer.bias is not None and residual.shape[:-1] == x.shape[:-1]
    ):  # fmt: skip
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")
    return residual + layer(x)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them: ``... x D -> ... x D``.

    In inference on the CPU, linear + GELU and linear + residual run as fused
    oneDNN kernels (one pass over the hidden activations instead of three).

    Args:
        embedding_dim: input and output width ``D``.
        mlp_dim: hidden width.
        act: activation class, instantiated once.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` through the MLP, plus ``residual`` (same shape as the output) if given."""
        exact_gelu = type(self.act) is nn.GELU and self.act.approximate == "none"
        if exact_gelu and x.dtype == self.lin1.weight.dtype and fused_linear_available(x):
            hidden = torch.ops.mkldnn._linear_pointwise(x, self.lin1.weight, self.lin1.bias, "gelu", [None], "none")
        else:
            hidden = self.act(self.lin1(x))
        if residual is None:
            return self.lin2(hidden)
        return linear_residual(hidden, self.lin2, residual)


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channels of a ``B x C x H x W`` tensor.

    Every pixel is normalised over its ``C`` values, then scaled and shifted per
    channel. Computed with the fused ``layer_norm`` kernel on a channels-last view;
    the result keeps the ``B x C x H x W`` shape (with channels-last strides,
    which the convolutions that follow it read without a copy).

    Args:
        num_channels: ``C``.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.permute(0, 2, 3, 1)
        normed = F.layer_norm(channels_last, (channels_last.shape[-1],), self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)
