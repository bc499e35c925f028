"""Instance metrics on constructed label images with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.evaluation import f1_score, match_instances, mean_matched_iou, overlap_table, same_id_iou


def _squares(shape=(60, 60), squares=((5, 5, 10), (30, 30, 10), (5, 40, 8))):
    labels = np.zeros(shape, dtype=np.int32)
    for k, (r, c, s) in enumerate(squares, start=1):
        labels[r : r + s, c : c + s] = k
    return labels


def test_identical_images_match_perfectly_whatever_the_ids():
    gt = _squares()
    pred = np.zeros_like(gt)
    for old, new in ((1, 7), (2, 3), (3, 100)):  # permuted, non-consecutive ids
        pred[gt == old] = new
    m = match_instances(gt, pred)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert m.f1 == 1.0
    assert np.allclose(m.ious, 1.0)
    assert dict(zip(m.gt_ids.tolist(), m.pred_ids.tolist())) == {1: 7, 2: 3, 3: 100}


def test_shifted_object_has_the_iou_computed_by_hand():
    gt = np.zeros((40, 40), np.uint16)
    gt[10:20, 10:20] = 1  # 100 px
    pred = np.zeros_like(gt)
    pred[10:20, 12:22] = 5  # 100 px, overlap 8 x 10 = 80 -> IoU 80 / 120
    (g, p, iou) = overlap_table(gt, pred)
    assert g.tolist() == [1] and p.tolist() == [5]
    assert iou[0] == pytest.approx(80 / 120)
    assert f1_score(gt, pred, 0.5) == 1.0
    assert f1_score(gt, pred, 0.7) == 0.0
    assert mean_matched_iou(gt, pred) == pytest.approx(2 / 3)


def test_missed_extra_and_merged_objects_count_as_errors():
    gt = _squares()
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 1  # exact copy of gt 1
    pred[50:58, 50:58] = 2  # false positive
    # gt 2 missed; gt 3 merged with a region as large as itself -> IoU 0.5, not > 0.5
    pred[5:13, 40:56] = 3
    m = match_instances(gt, pred)
    assert (m.tp, m.fp, m.fn, m.n_gt, m.n_pred) == (1, 2, 2, 3, 3)
    assert m.f1 == pytest.approx(2 * 1 / 6)
    assert m.precision == pytest.approx(1 / 3) and m.recall == pytest.approx(1 / 3)


def test_split_object_matches_at_most_once():
    gt = np.zeros((30, 30), np.int32)
    gt[0:10, 0:20] = 1  # 200 px
    pred = np.zeros_like(gt)
    pred[0:10, 0:12] = 1  # 120 px, IoU 0.6
    pred[0:10, 12:20] = 2  # 80 px, IoU 0.4
    m = match_instances(gt, pred)
    assert m.tp == 1 and m.pred_ids.tolist() == [1]
    # Below 0.5 the assignment is still one to one and picks the best pair.
    low = match_instances(gt, pred, iou_threshold=0.3)
    assert low.tp == 1 and low.pred_ids.tolist() == [1] and low.ious[0] == pytest.approx(0.6)


def test_hungarian_assignment_beats_greedy_below_half():
    # gt A = [0, 100), gt B = [100, 140); pred X = [40, 140), pred Y = [0, 35).
    # IoU A-X = 60 / 140 = .43 (the best pair), B-X = 40 / 100 = .40, A-Y = .35.
    # Greedy takes A-X and leaves B alone; the optimal assignment is A-Y, B-X.
    gt = np.zeros((1, 200), np.int32)
    pred = np.zeros_like(gt)
    gt[0, 0:100] = 1
    gt[0, 100:140] = 2
    pred[0, 40:140] = 10
    pred[0, 0:35] = 11
    m = match_instances(gt, pred, iou_threshold=0.3)
    assert m.tp == 2
    assert dict(zip(m.gt_ids.tolist(), m.pred_ids.tolist())) == {1: 11, 2: 10}
    assert np.allclose(m.ious, [0.35, 0.4])
    # At 0.5 nothing matches.
    assert match_instances(gt, pred).tp == 0


def test_empty_images():
    empty = np.zeros((10, 10), np.int32)
    assert f1_score(empty, empty) == 1.0
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert f1_score(one, empty) == 0.0
    assert f1_score(empty, one) == 0.0
    assert np.isnan(mean_matched_iou(one, empty))


def test_same_id_iou_compares_objects_with_the_same_id():
    ref = _squares()
    pred = np.zeros_like(ref)
    pred[5:15, 5:15] = 1  # same as ref 1
    pred[30:40, 30:35] = 2  # half of ref 2 -> IoU 0.5
    pred[5:13, 40:48] = 9  # ref 3 given another id -> ref 3 scores 0
    scores = same_id_iou(ref, pred)
    assert scores == {1: 1.0, 2: 0.5, 3: 0.0}


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        match_instances(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="integer label image"):
        f1_score(np.zeros((4, 4), float), np.zeros((4, 4), int))
