"""The assembled promptable model: image encoder, prompt encoder, mask decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..registry import ModelSpec


class SamModel(nn.Module):
    """Image encoder + prompt encoder + mask decoder, with the registry entry.

    The three submodules carry the parameter names of Meta's checkpoints
    (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so
    ``load_state_dict(official_state_dict, strict=True)`` works. Pre- and
    post-processing live outside the module (:mod:`napari_sam.preprocess`,
    :mod:`napari_sam.inference`), so the model stays a pure tensor function.

    Attributes:
        spec: the :class:`~napari_sam.registry.ModelSpec` it was built for.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        spec: ModelSpec,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.spec = spec

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def extra_repr(self) -> str:
        return f"spec={self.spec.name!r}, architecture={self.spec.architecture!r}"
