"""Small building blocks shared by the encoder, the transformer and the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them: ``... x D -> ... x D``.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


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
