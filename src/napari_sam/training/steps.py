"""One training step and one validation pass (prompt encoder + mask decoder only).

A step follows the paper's interactive training on a batch of objects, each seen
through one view (:class:`~.views.View`; objects of several views share a batch,
each with its view's embedding): each object is first prompted by a noisy box
(single-mask output) or by one click inside it (three outputs: the ambiguity
masks), then ``correction_rounds`` times by a click in the error region of the
previous mask, with the previous low-resolution logits fed back as mask prompt
(single-mask output). The loss of every round counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..inference import run_decoder
from ..models.sam import SamModel
from .losses import mask_iou, sam_loss
from .prompts import correction_points, interior_points, noisy_boxes, points_inside
from .views import View

#: ``(view, object index)``: one training sample.
Sample = tuple[View, int]


def decode(model: SamModel, features: torch.Tensor, image_pe: torch.Tensor, coords, labels, boxes, masks,
           multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder with gradients: ``(B x C x 256 x 256 logits, B x C IoU)``.

    ``features`` is ``1 x 256 x 64 x 64`` (shared) or ``B x 256 x 64 x 64``; no clicks
    when ``coords`` is None or has none.
    """
    points = None if coords is None or coords.shape[1] == 0 else (coords, labels)
    return run_decoder(model, features, image_pe, points, boxes, masks, multimask)


def _stack(samples: Sequence[Sample]):
    """Batch tensors of ``samples``: features, targets, valid masks, boxes, scale, image limits."""
    features = torch.cat([view.features for view, _ in samples])
    targets = torch.stack([view.targets[row] for view, row in samples])
    valid = torch.stack([view.valid_mask for view, _ in samples])
    boxes = torch.stack([view.boxes[row] for view, row in samples])
    limits = torch.tensor([[view.embedding.input_size[1], view.embedding.input_size[0]] for view, _ in samples],
                          dtype=torch.float32)
    scale = samples[0][0].scale
    return features, targets, valid, boxes, scale, limits


def training_loss(
    model: SamModel,
    samples: Sequence[Sample],
    *,
    point_fraction: float,
    box_noise: float,
    correction_rounds: int,
    generator: torch.Generator,
    image_pe: torch.Tensor,
    backward: bool = False,
) -> torch.Tensor:
    """The loss of a batch of objects over all prompt rounds: the mean over rounds and objects of
    :func:`~.losses.sam_loss`.

    Rounds share no graph (the previous mask is fed back detached, the embedding is
    frozen), so with ``backward`` each round's part is back-propagated at once and its
    activations freed: the gradients are the same as one ``backward()`` of the sum,
    at a third of the peak memory with two correction rounds.

    Returns:
        A scalar: with gradients, or (``backward``) detached after the gradients were accumulated.
    """
    features, targets, valid, boxes_all, scale, limits = _stack(samples)
    click_first = torch.rand(len(samples), generator=generator) < point_fraction
    denominator = len(samples) * (correction_rounds + 1)
    total = features.new_zeros(())
    for first_click in (False, True):
        rows = torch.nonzero(click_first == first_click).flatten()
        if len(rows) == 0:
            continue
        truth, inside, feats = targets[rows], valid[rows], features[rows]
        if first_click:
            coords = points_inside(truth, scale, generator)
            labels = torch.ones(len(rows), 1, dtype=torch.long)
            boxes = None
        else:
            coords = torch.zeros(len(rows), 0, 2)
            labels = torch.zeros(len(rows), 0, dtype=torch.long)
            boxes = noisy_boxes(boxes_all[rows], box_noise, generator, limits[rows])
        previous = None
        for round_index in range(correction_rounds + 1):
            if previous is not None:
                new_coords, new_labels = correction_points(previous > 0, truth, scale, generator)
                coords = torch.cat([coords, new_coords], 1)
                labels = torch.cat([labels, new_labels], 1)
            logits, iou_pred = decode(model, feats, image_pe, coords, labels, boxes,
                                      None if previous is None else previous[:, None],
                                      multimask=round_index == 0 and boxes is None)
            loss, best, _ = sam_loss(logits, iou_pred, truth, inside)
            part = loss * len(rows) / denominator
            if backward:
                part.backward()
                part = part.detach()
            total = total + part
            previous = logits.detach()[torch.arange(len(best)), best]
    return total


#: Objects decoded at once in validation: the decoder copies the image embedding per object
#: (4 MiB each), so a view of 200 nuclei in one batch would need gigabytes.
VALIDATION_CHUNK = 16


@torch.no_grad()  # not inference_mode: tensors cached for later training steps must stay usable
def validate_view(model: SamModel, view: View, image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object IoU (low-res frame) from the true box, and from one click at the most interior pixel.

    The click's three masks are judged by the one the model rates best (its
    predicted IoU), as a person sees it. Objects are decoded
    :data:`VALIDATION_CHUNK` at a time, without gradients.

    Returns:
        ``(box_iou, click_iou)``: two ``K`` tensors.
    """
    features = view.features
    box_parts, click_parts = [], []
    for start in range(0, len(view), VALIDATION_CHUNK):
        part = slice(start, start + VALIDATION_CHUNK)
        targets, boxes = view.targets[part], view.boxes[part]
        valid = view.valid_mask.expand(len(targets), -1, -1)
        logits, _ = decode(model, features, image_pe, None, None, boxes, None, multimask=False)
        box_parts.append(mask_iou(logits, targets, valid)[:, 0])
        coords = interior_points(targets, view.scale)
        labels = torch.ones(len(targets), 1, dtype=torch.long)
        logits, iou_pred = decode(model, features, image_pe, coords, labels, None, None, multimask=True)
        chosen = iou_pred.argmax(1)
        click_parts.append(mask_iou(logits, targets, valid)[torch.arange(len(targets)), chosen])
    return torch.cat(box_parts), torch.cat(click_parts)
