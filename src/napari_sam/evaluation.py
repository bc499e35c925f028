"""Instance segmentation metrics: match objects by IoU, F1, mean IoU (pure numpy).

Label images are ``H x W`` integer arrays, 0 background, every other value one
object (ids need not be consecutive). All overlaps are counted at once from a
sparse contingency table of ``(gt id, pred id)`` pixel pairs, so the cost is
``O(H * W + pairs)`` whatever the number of objects.

Matching: a ground-truth object and a predicted object match when their IoU is
above ``iou_threshold``. With a threshold of 0.5 or more an object can overlap at
most one other object that much, so the matching is unique and found directly;
below 0.5 the pairs are chosen by a maximum-IoU assignment (Hungarian algorithm,
:func:`scipy.optimize.linear_sum_assignment`). This is the usual definition of
the DSB 2018 / StarDist "accuracy at IoU t" family of metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Matching:
    """The result of :func:`match_instances`.

    Attributes:
        gt_ids, pred_ids: ``M`` matched ids (pairs), int64.
        ious: ``M`` IoU of each matched pair, float64.
        n_gt, n_pred: number of objects in each image.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    ious: np.ndarray
    n_gt: int
    n_pred: int

    @property
    def tp(self) -> int:
        return int(self.ious.size)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_gt - self.tp

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float(self.n_gt == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_gt if self.n_gt else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        total = self.n_gt + self.n_pred
        return 2 * self.tp / total if total else 1.0

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the matched pairs (NaN if nothing matched)."""
        return float(self.ious.mean()) if self.ious.size else float("nan")


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"Label images differ in shape: ground truth {gt.shape}, prediction {pred.shape}.")
    for name, array in (("ground truth", gt), ("prediction", pred)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"The {name} must be an integer label image, got dtype {array.dtype}.")
    return gt.astype(np.int64, copy=False).ravel(), pred.astype(np.int64, copy=False).ravel()


def overlap_table(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping pair of objects.

    Args:
        gt, pred: ``H x W`` integer label images of the same shape.

    Returns:
        ``(gt_ids, pred_ids, ious)``: three ``P`` arrays, one entry per pair of
        objects that share at least one pixel.
    """
    g, p = _check_pair(gt, pred)
    gt_u, g_inv = np.unique(g, return_inverse=True)
    pred_u, p_inv = np.unique(p, return_inverse=True)
    gt_area = np.bincount(g_inv, minlength=gt_u.size)
    pred_area = np.bincount(p_inv, minlength=pred_u.size)
    both = (g != 0) & (p != 0)
    pair_code = g_inv[both] * pred_u.size + p_inv[both]
    codes, inter = np.unique(pair_code, return_counts=True)
    gi, pi = np.divmod(codes, pred_u.size)
    union = gt_area[gi] + pred_area[pi] - inter
    return gt_u[gi], pred_u[pi], inter / union


def _n_objects(labels: np.ndarray) -> int:
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))


def match_instances(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> Matching:
    """Match the objects of two label images one to one by IoU.

    Args:
        gt: ``H x W`` ground-truth labels. pred: ``H x W`` predicted labels.
        iou_threshold: pairs need IoU strictly above this to match.

    Returns:
        :class:`Matching` (matched ids, their IoU, object counts; ``.f1`` etc.).
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}.")
    gt_ids, pred_ids, ious = overlap_table(gt, pred)
    keep = ious > iou_threshold
    gt_ids, pred_ids, ious = gt_ids[keep], pred_ids[keep], ious[keep]
    if iou_threshold < 0.5 and ious.size:
        from scipy.optimize import linear_sum_assignment

        gu, gi = np.unique(gt_ids, return_inverse=True)
        pu, pi = np.unique(pred_ids, return_inverse=True)
        cost = np.zeros((gu.size, pu.size))
        cost[gi, pi] = -ious
        rows, cols = linear_sum_assignment(cost)
        chosen = cost[rows, cols] < 0
        pair_index = np.full(cost.shape, -1, dtype=np.int64)
        pair_index[gi, pi] = np.arange(gi.size)
        index = pair_index[rows[chosen], cols[chosen]]
        gt_ids, pred_ids, ious = gt_ids[index], pred_ids[index], ious[index]
    order = np.argsort(gt_ids, kind="stable")
    return Matching(
        gt_ids=gt_ids[order], pred_ids=pred_ids[order], ious=ious[order].astype(np.float64),
        n_gt=_n_objects(gt), n_pred=_n_objects(pred),
    )


def f1_score(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> float:
    """F1 = 2 TP / (n_gt + n_pred) with TP the pairs matched at ``iou_threshold``.

    1.0 when both images are empty.
    """
    return match_instances(gt, pred, iou_threshold).f1


def mean_matched_iou(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> float:
    """Mean IoU of the pairs matched at ``iou_threshold`` (NaN if none)."""
    return match_instances(gt, pred, iou_threshold).mean_iou


def same_id_iou(reference: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """IoU of each object of ``reference`` with the object of ``pred`` that has the same id.

    For prompted segmentation, where prompt ``k`` (from reference object ``k``)
    must give object ``k``. A reference object missing from ``pred`` has IoU 0.

    Returns:
        ``{id: IoU}`` for every non-zero id of ``reference``.
    """
    g, p = _check_pair(reference, pred)
    ids = np.unique(g)
    ids = ids[ids != 0]
    gt_area = np.bincount(np.searchsorted(ids, g[g != 0]), minlength=ids.size)
    in_ref = np.isin(p, ids)
    pred_area = np.bincount(np.searchsorted(ids, p[in_ref]), minlength=ids.size)
    same = (g == p) & (g != 0)
    inter = np.bincount(np.searchsorted(ids, g[same]), minlength=ids.size)
    union = gt_area + pred_area - inter
    return {int(i): float(x) for i, x in zip(ids, inter / np.maximum(union, 1))}
