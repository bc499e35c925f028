"""Clicks for box-only models: search the box prompts that explain a set of clicks.

LiteMedSAM was trained on box prompts only; a point prompt gives it near-empty
masks. So clicks become boxes: candidate boxes around the positive points at
several sizes and aspect ratios (cut so they leave negative points out, bounded by
a box if one is given) are decoded in one batch, and each candidate mask is scored
by the model's predicted IoU, its stability (IoU of the mask at logit +1 and -1),
how well its bounding box fits the prompt box (a box the model was trained on is
the object's bounding box) and its agreement with the clicks (positives inside,
negatives outside). The best distinct masks, up to three, are the small / medium /
large answers (SAM's subpart / part / whole ambiguity).

Pure functions on numpy / torch arrays; :class:`~napari_sam.predictor.Predictor`
runs the decoder. Boxes and points are ``(x, y)`` in the encoder's input frame;
logits are the decoder's low-resolution logits of a window of the image (see
:class:`Window`), ``lowres`` pixels per input pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Box sides tried around the clicks, as a fraction of the input side (``S``): from
#: about 8 px to 123 px of a 256 px LiteMedSAM input (objects up to about half the
#: image side; draw a box around larger ones), ratio ~1.41 between sizes. Larger
#: candidates (tried: up to 197 px) win too often with a mask of a whole cluster:
#: one click on the nuclei planes fell from 0.72 to 0.55. Each candidate costs
#: decoder work on a window of the embedding, so the list is short; the refinement
#: step (a box fitted to the mask) adjusts size and shape.
SIDE_FRACTIONS = tuple(float(f) for f in 0.03 * np.sqrt(2.0) ** np.arange(9))
#: Aspect ratios (width / height) of the candidate boxes.
ASPECTS = (1.0,)
#: Margin (input pixels, at a 256 px input) added around a mask's bounding box when
#: it becomes the box prompt of the refinement step.
REFINE_MARGIN = 2.0
#: Candidates re-prompted with their own mask's bounding box (the refinement step).
REFINE_TOP = 3
#: Two masks with an IoU above this are the same answer.
DISTINCT_IOU = 0.75
#: Answers scoring below this fraction of the best one are not returned.
MIN_RELATIVE_SCORE = 0.3
#: Tokens of the image embedding kept around the candidate boxes when decoding.
WINDOW_MARGIN_TOKENS = 4
#: The fixed cost of one decoder call, in window tokens of one prompt (measured on 2
#: cores: ~9 ms per call, ~16 us per token and prompt), for :func:`window_groups`.
CALL_COST_TOKENS = 560


@dataclass(frozen=True)
class Window:
    """A rectangle of the ``g x g`` image-embedding grid the decoder works on.

    Attributes:
        rows, cols: ``(start, stop)`` token indices.
        upscale: low-resolution logit pixels per token (4 for every SAM decoder).
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    upscale: int = 4

    @property
    def origin(self) -> tuple[int, int]:
        """``(x, y)`` of the window's corner in low-resolution pixels."""
        return self.cols[0] * self.upscale, self.rows[0] * self.upscale

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the window's logits in low-resolution pixels."""
        return (self.rows[1] - self.rows[0]) * self.upscale, (self.cols[1] - self.cols[0]) * self.upscale


def candidate_boxes(
    positive_xy: np.ndarray,
    negative_xy: np.ndarray,
    input_size: tuple[int, int],
    image_size: int,
    bound: np.ndarray | None = None,
    side_fractions: tuple[float, ...] = SIDE_FRACTIONS,
    aspects: tuple[float, ...] = ASPECTS,
) -> np.ndarray:
    """Box prompts that could explain the clicks, in the input frame.

    Around the bounding box of the positive points, boxes grow by every side in
    ``side_fractions`` (times ``image_size``) and every aspect ratio. A box that
    holds a negative point also comes in a copy with one side moved just past
    that point (the side that keeps the most area and every positive point).
    With ``bound`` (a box the person drew), the boxes are clipped to it and the
    bound itself is a candidate; without positive points, the bound and copies of
    it cut by the negatives are the candidates.

    Args:
        positive_xy: ``P x 2`` positive clicks (x, y); negative_xy: ``N x 2``.
        input_size: ``(h, w)`` of the image inside the input frame (boxes are clipped to it).
        image_size: side ``S`` of the square input frame.
        bound: ``4`` (x0, y0, x1, y1) or None.

    Returns:
        ``K x 4`` float64 (x0, y0, x1, y1), at least one pixel wide and high, unique.
    """
    positive_xy = np.asarray(positive_xy, np.float64).reshape(-1, 2)
    negative_xy = np.asarray(negative_xy, np.float64).reshape(-1, 2)
    h, w = input_size
    limit = np.array([0.0, 0.0, w, h]) if bound is None else np.asarray(bound, np.float64)
    boxes = [] if bound is None else [limit.copy()]
    if len(positive_xy):
        low, high = positive_xy.min(0), positive_xy.max(0)
        centre, half = (low + high) / 2, (high - low) / 2
        for fraction in side_fractions:
            side = fraction * image_size
            for aspect in aspects:
                extent = half + 0.5 * side * np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
                boxes.append(np.concatenate([centre - extent, centre + extent]))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes = np.concatenate([np.maximum(boxes[:, :2], limit[:2]), np.minimum(boxes[:, 2:], limit[2:])], 1)
    for point in negative_xy:
        cut = [c for c in (_exclude(box, point, positive_xy) for box in boxes) if c is not None]
        if cut:
            boxes = np.concatenate([boxes, np.asarray(cut)])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    boxes = boxes[((boxes[:, 2:] - boxes[:, :2]) >= 1.0).all(1)]
    _, first = np.unique(np.round(boxes, 1), axis=0, return_index=True)
    return boxes[np.sort(first)]


def _exclude(box: np.ndarray, point: np.ndarray, positive_xy: np.ndarray) -> np.ndarray | None:
    """``box`` with one side moved just past ``point`` (keeping the positives), or None."""
    x, y = point
    if not (box[0] < x < box[2] and box[1] < y < box[3]):
        return None
    low = positive_xy.min(0) if len(positive_xy) else np.array([np.inf, np.inf])
    high = positive_xy.max(0) if len(positive_xy) else np.array([-np.inf, -np.inf])
    options = []
    if x < low[0]:
        options.append((0, x + 1.0))
    if x > high[0]:
        options.append((2, x - 1.0))
    if y < low[1]:
        options.append((1, y + 1.0))
    if y > high[1]:
        options.append((3, y - 1.0))
    best, best_area = None, 0.0
    for side, value in options:
        cut = box.copy()
        cut[side] = value
        area = max(cut[2] - cut[0], 0.0) * max(cut[3] - cut[1], 0.0)
        if area > best_area:
            best, best_area = cut, area
    return best


def decoding_window(boxes: np.ndarray, image_size: int, grid: int = 64, margin: int = WINDOW_MARGIN_TOKENS) -> Window:
    """The rectangle of the embedding grid that holds ``boxes`` (input frame) plus ``margin`` tokens."""
    per_token = image_size / grid
    lo = np.floor(boxes[:, :2].min(0) / per_token).astype(int) - margin
    hi = np.ceil(boxes[:, 2:].max(0) / per_token).astype(int) + margin
    lo, hi = np.maximum(lo, 0), np.minimum(hi, grid)
    return Window(rows=(int(lo[1]), int(hi[1])), cols=(int(lo[0]), int(hi[0])), upscale=4)


def window_groups(
    boxes: np.ndarray, image_size: int, grid: int = 64, call_cost: int = CALL_COST_TOKENS
) -> list[tuple[np.ndarray, Window]]:
    """Split boxes into decoder calls, each on the window that holds its boxes.

    A call costs about ``call_cost + prompts x window tokens``: small boxes share a
    small window, a large box gets the large window it needs. Greedy over boxes
    sorted by area: a box joins the current group when that costs less than a call
    of its own.

    Returns:
        ``[(indices into boxes, Window), ...]`` covering every box once.
    """
    order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")

    def tokens(window: Window) -> int:
        return (window.rows[1] - window.rows[0]) * (window.cols[1] - window.cols[0])

    groups: list[list[int]] = []
    current: list[int] = []
    for index in order.tolist():
        if current:
            alone = call_cost + tokens(decoding_window(boxes[[index]], image_size, grid))
            before = call_cost + len(current) * tokens(decoding_window(boxes[current], image_size, grid))
            window = decoding_window(boxes[current + [index]], image_size, grid)
            merged = call_cost + (len(current) + 1) * tokens(window)
            if merged > before + alone:
                groups.append(current)
                current = []
        current.append(index)
    groups.append(current)
    return [(np.asarray(g), decoding_window(boxes[g], image_size, grid)) for g in groups if g]


def stability_scores(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """IoU of ``logits > offset`` and ``logits > -offset`` per mask: ``B x ...`` -> ``B``."""
    flat = logits.flatten(1)
    inner = (flat > offset).sum(1).float()
    outer = (flat > -offset).sum(1).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes ``B x 4`` (x0, y0, x1, y1; end exclusive) of ``B x h x w`` masks; zeros if empty."""
    _, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys + 1, 0).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs + 1, 0).amax(1)
    empty = ~rows.any(1)
    out = torch.stack([x0, y0, x1, y1], 1).float()
    out[empty] = 0.0
    return out


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two ``B x 4`` box arrays (x0, y0, x1, y1)."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]

    def area(box):
        return (box[:, 2] - box[:, 0]).clamp(min=0) * (box[:, 3] - box[:, 1]).clamp(min=0)

    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


def sample_points(logits: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """Logits ``B x h x w`` at ``N x 2`` (x, y) window pixel coordinates (nearest pixel): ``B x N``."""
    _, h, w = logits.shape
    if len(points) == 0:
        return logits.new_zeros((logits.shape[0], 0))
    xs = torch.as_tensor(np.floor(points[:, 0]).clip(0, w - 1), dtype=torch.long)
    ys = torch.as_tensor(np.floor(points[:, 1]).clip(0, h - 1), dtype=torch.long)
    return logits[:, ys, xs]


@dataclass(frozen=True)
class CandidateScores:
    """How well each candidate mask answers the clicks (all ``B``).

    Attributes:
        score: the product below, in [0, 1]: what the candidates are ranked by.
        predicted_iou: the model's IoU prediction.
        stability: IoU of the mask at logit +1 and -1.
        fit: IoU of the prompt box and the mask's bounding box.
        agreement: fraction of the clicks on the right side (positives inside, negatives outside).
    """

    score: torch.Tensor
    predicted_iou: torch.Tensor
    stability: torch.Tensor
    fit: torch.Tensor
    agreement: torch.Tensor


def score_candidates(
    logits: torch.Tensor,
    predicted_iou: torch.Tensor,
    boxes_lowres: torch.Tensor,
    positive_lowres: np.ndarray,
    negative_lowres: np.ndarray,
) -> CandidateScores:
    """Score candidate masks.

    Args:
        logits: ``B x h x w`` low-resolution logits of a window.
        predicted_iou: ``B``.
        boxes_lowres: ``B x 4`` prompt boxes in the window's low-resolution pixels.
        positive_lowres, negative_lowres: ``P x 2`` / ``N x 2`` clicks, same frame.
    """
    masks = logits > 0
    stability = stability_scores(logits)
    fit = box_iou(mask_boxes(masks), boxes_lowres)
    at_positive = sample_points(logits, positive_lowres) > 0
    at_negative = sample_points(logits, negative_lowres) > 0
    n = at_positive.shape[1] + at_negative.shape[1]
    right = at_positive.sum(1) + (~at_negative).sum(1)
    agreement = right.float() / max(n, 1)
    iou = predicted_iou.float().clamp(0, 1)
    score = iou * stability * fit * agreement**4
    return CandidateScores(score, iou, stability, fit, agreement)


def refinement_boxes(logits: torch.Tensor, order: torch.Tensor, margin: float) -> torch.Tensor:
    """Bounding boxes (+ ``margin``, window pixels) of the masks ``order`` points to; empty masks dropped."""
    masks = logits[order] > 0
    boxes = mask_boxes(masks)
    keep = (boxes[:, 2:] > boxes[:, :2]).all(1)
    boxes = boxes[keep]
    return torch.cat([boxes[:, :2] - margin, boxes[:, 2:] + margin], 1)


def distinct_answers(
    logits: torch.Tensor,
    score: torch.Tensor,
    k: int = 3,
    distinct_iou: float = DISTINCT_IOU,
    min_relative: float = MIN_RELATIVE_SCORE,
) -> list[int]:
    """Up to ``k`` candidates, best first, whose masks differ (IoU below ``distinct_iou``).

    Candidates scoring under ``min_relative`` times the best are left out (the
    best one is always kept, even at score 0). Returns indices into ``logits``.
    """
    order = torch.argsort(score, descending=True)
    masks = (logits > 0).flatten(1)
    area = masks.sum(1)
    chosen: list[int] = []
    best = float(score[order[0]]) if len(order) else 0.0
    for index in order.tolist():
        if chosen and float(score[index]) < min_relative * best:
            break
        if area[index] == 0 and chosen:
            continue
        inter = (masks[chosen] & masks[index]).sum(1)
        union = area[chosen] + area[index] - inter
        if chosen and bool((inter.float() / union.clamp(min=1).float() >= distinct_iou).any()):
            continue
        chosen.append(index)
        if len(chosen) == k:
            break
    return chosen
