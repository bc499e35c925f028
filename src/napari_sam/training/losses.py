"""The Segment Anything training loss (Kirillov et al., 2023, appendix A).

Mask loss: focal loss and dice loss in a 20 : 1 ratio; the IoU head: mean squared
error between its prediction and the IoU of the predicted mask with the ground
truth. With several outputs for an ambiguous prompt only the output with the
lowest mask loss is trained on the mask (the IoU head is trained on all of them).

Every function takes logits ``B x C x H x W``, targets ``B x H x W`` (0/1) and
``valid``, ``B x H x W`` bool: the pixels that show the image (the rest is the
encoder input's zero padding, left out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """``B x C`` sigmoid focal loss (Lin et al., 2017), mean over the valid pixels."""
    truth = targets.float()[:, None].expand_as(logits)
    probability = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    p_t = probability * truth + (1 - probability) * (1 - truth)
    alpha_t = alpha * truth + (1 - alpha) * (1 - truth)
    loss = alpha_t * ce * (1 - p_t) ** gamma
    weight = valid.float()[:, None]
    return (loss * weight).flatten(2).sum(2) / weight.flatten(2).sum(2).clamp(min=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``B x C`` soft dice loss ``1 - (2|P.T| + s) / (|P| + |T| + s)`` over the valid pixels."""
    probability = (torch.sigmoid(logits) * valid.float()[:, None]).flatten(2)
    truth = (targets.float() * valid.float()).flatten(1)[:, None]
    numerator = 2 * (probability * truth).sum(2) + smooth
    denominator = probability.sum(2) + truth.sum(2) + smooth
    return 1 - numerator / denominator


def mask_iou(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``B x C`` IoU of the masks ``logits > 0`` with the targets (1 when both are empty)."""
    inside = valid.bool()[:, None]
    predicted = ((logits > 0) & inside).flatten(2)
    truth = (targets.bool() & valid.bool()).flatten(1)[:, None]
    inter = (predicted & truth).sum(2).float()
    union = (predicted | truth).sum(2).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor):
    """The paper's loss for one round of prompts.

    Args:
        logits: ``B x C x 256 x 256`` decoder logits (C = 1 or 3).
        iou_pred: ``B x C`` predicted IoU.
        targets: ``B x 256 x 256`` ground truth.
        valid: ``B x 256 x 256`` bool, the image inside the padding.

    Returns:
        ``(loss, best, iou)``: the scalar loss (mean over the batch), the index of
        the output with the lowest mask loss (``B``), and the real IoU (``B x C``).
    """
    mask_term = FOCAL_WEIGHT * focal_loss(logits, targets, valid) + DICE_WEIGHT * dice_loss(logits, targets, valid)
    best_value, best = mask_term.min(1)
    with torch.no_grad():
        iou = mask_iou(logits, targets, valid)
    iou_term = F.mse_loss(iou_pred, iou, reduction="none").mean(1)
    return (best_value + IOU_WEIGHT * iou_term).mean(), best, iou
