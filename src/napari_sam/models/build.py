"""Build an empty (randomly initialised) model for an architecture name.

``build_model(spec, initialise=False)`` skips the random initialisation (a third
of a second for LiteMedSAM, seconds for ViT-H) when the weights are loaded right
after, as :func:`napari_sam.loading.model_from_state_dict` does. (Building on the
meta device would skip it too, but its first use imports ``torch._dynamo``: seconds.)
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..registry import ARCHITECTURES, ModelSpec
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import SamModel
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

PROMPT_EMBED_DIM = 256
EMBEDDING_SIDE = 64

#: ViT configurations of the official checkpoints: (embed_dim, depth, heads, global blocks).
VIT_CONFIGS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}

TINY_VIT_CONFIG = dict(
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0,
    drop_rate=0.0,
    drop_path_rate=0.0,
    use_checkpoint=False,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    layer_lr_decay=0.8,
)


def build_image_encoder(architecture: str) -> nn.Module:
    """The image encoder of ``architecture``; maps ``B x 3 x S x S`` to ``B x 256 x 64 x 64``."""
    if architecture in VIT_CONFIGS:
        embed_dim, depth, heads, global_blocks = VIT_CONFIGS[architecture]
        return ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=1024,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=global_blocks,
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        )
    if architecture == "vit_t":
        return TinyViT(img_size=1024, in_chans=3, num_classes=1000, **TINY_VIT_CONFIG)
    if architecture == "lite_medsam":
        return TinyViT(
            img_size=256,
            in_chans=3,
            num_classes=0,
            pointwise_patch_embed=True,
            **TINY_VIT_CONFIG,
        )
    raise ValueError(f"Unknown architecture {architecture!r}; expected one of {ARCHITECTURES}.")


class _SkipRandomInit(TorchFunctionMode):
    """Turn the in-place random fills of ``torch.nn.init`` into no-ops (this thread only).

    Parameters keep the uninitialised memory ``torch.empty`` gave them; every one
    of them must be overwritten (by a strict ``load_state_dict``) before use.
    """

    _SKIPPED = frozenset(
        {
            torch.Tensor.uniform_,
            torch.Tensor.normal_,
            *(
                getattr(nn.init, name)
                for name in ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                             "xavier_uniform_", "xavier_normal_", "orthogonal_")
                if hasattr(nn.init, name)
            ),
        }
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def build_model(spec: ModelSpec, initialise: bool = True) -> SamModel:
    """A :class:`SamModel` for ``spec`` in eval mode (load weights afterwards).

    Args:
        spec: the registry entry (architecture and input size).
        initialise: initialise the weights randomly, as the official code does.
            False leaves them uninitialised (faster): only for a strict
            ``load_state_dict`` right after.
    """
    with contextlib.nullcontext() if initialise else _SkipRandomInit():
        return _build(spec)


def _build(spec: ModelSpec) -> SamModel:
    image_size = spec.image_size
    prompt_encoder = PromptEncoder(
        embed_dim=PROMPT_EMBED_DIM,
        image_embedding_size=(EMBEDDING_SIDE, EMBEDDING_SIDE),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    model = SamModel(build_image_encoder(spec.architecture), prompt_encoder, mask_decoder, spec)
    return model.eval()
