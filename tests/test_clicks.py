"""Clicks with the box-only default model (LiteMedSAM): the box search of napari_sam.clicks.

Synthetic objects of known size, then real ones (skimage's coins, DSB 2018 nuclei).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coins_reference import coin_masks, iou
from scipy import ndimage

from napari_sam import Predictor, clicks, load_model
from napari_sam.errors import PromptError


@pytest.fixture(scope="module")
def predictor():
    return Predictor(load_model("lite_medsam"), precision="float32")


def disc(shape, cx, cy, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def best(prediction) -> np.ndarray:
    return prediction.masks[int(np.argmax(prediction.iou_scores))]


def interior_point(mask: np.ndarray) -> list[int]:
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return [int(x), int(y)]


# ----------------------------------------------------------------- pure functions


def test_candidate_boxes_surround_the_clicks_and_respect_bound_and_negatives():
    boxes = clicks.candidate_boxes(np.array([[100.0, 60.0]]), np.zeros((0, 2)), (200, 256), 256)
    assert len(boxes) == len(clicks.SIDE_FRACTIONS) * len(clicks.ASPECTS)
    assert ((boxes[:, 0] <= 100) & (boxes[:, 2] >= 100) & (boxes[:, 1] <= 60) & (boxes[:, 3] >= 60)).all()
    assert (boxes >= 0).all() and (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 200).all()  # clipped to the image
    sides = boxes[:, 2] - boxes[:, 0]
    assert sides.min() < 10 and sides.max() > 100  # small nuclei to objects half the image wide

    bound = np.array([80.0, 40.0, 130.0, 90.0])
    inside = clicks.candidate_boxes(np.array([[100.0, 60.0]]), np.zeros((0, 2)), (200, 256), 256, bound)
    assert (inside[:, :2] >= bound[:2]).all() and (inside[:, 2:] <= bound[2:]).all()
    assert any(np.allclose(b, bound) for b in inside)

    cut = clicks.candidate_boxes(np.array([[100.0, 60.0]]), np.array([[120.0, 60.0]]), (200, 256), 256)
    excluding = cut[(cut[:, 2] < 120)]
    assert len(excluding) >= 4 and (excluding[:, 0] <= 100).all()  # copies cut just before the negative


def test_scores_prefer_masks_that_agree_with_the_clicks():
    logits = torch.full((3, 32, 32), -5.0)
    logits[0, 5:15, 5:15] = 5.0  # the clicked square, box fitted
    logits[1, 5:25, 5:25] = 5.0  # a larger square holding the negative click
    logits[2, 20:25, 20:25] = 5.0  # around the negative click, away from the positive one
    boxes = torch.tensor([[5, 5, 15, 15], [5, 5, 25, 25], [20, 20, 25, 25]], dtype=torch.float32)
    scores = clicks.score_candidates(logits, torch.full((3,), 0.9), boxes, np.array([[10.0, 10.0]]),
                                     np.array([[22.0, 22.0]]))
    assert scores.agreement.tolist() == [1.0, 0.5, 0.0]
    assert int(torch.argmax(scores.score)) == 0
    assert torch.allclose(scores.fit, torch.ones(3)) and torch.allclose(scores.stability, torch.ones(3))
    assert clicks.distinct_answers(logits, scores.score, k=3, min_relative=0.0)[0] == 0


def test_stability_and_mask_boxes():
    logits = torch.full((2, 10, 10), -3.0)
    logits[0, 2:6, 3:8] = 3.0
    logits[0, 1, 3:8] = 0.5  # inside at -1, outside at +1
    np.testing.assert_allclose(clicks.stability_scores(logits).numpy(), [20 / 25, 0.0])
    assert clicks.mask_boxes(logits > 0).tolist() == [[3, 1, 8, 6], [0, 0, 0, 0]]


# ----------------------------------------------------------------- synthetic objects


def test_one_click_gives_the_clicked_disc(predictor):
    image = np.zeros((200, 300), np.uint8)
    yy, xx = np.mgrid[:200, :300]
    ellipse = ((xx - 200) / 40.0) ** 2 + ((yy - 80) / 20.0) ** 2 <= 1
    round_ = disc(image.shape, 70, 140, 25)
    image[ellipse], image[round_] = 180, 220
    predictor.set_image(image)
    for point, truth, other in (([200, 80], ellipse, round_), ([70, 140], round_, ellipse)):
        prediction = predictor.predict(points=[point], labels=[1])
        assert prediction.masks.shape[1:] == image.shape and 1 <= len(prediction.masks) <= 3
        assert iou(best(prediction), truth) > 0.7 and not (best(prediction) & other).any()
    # a box with a click: the box bounds the search
    boxed = predictor.predict(points=[[200, 80]], labels=[1], box=[150, 50, 250, 110])
    assert iou(best(boxed), ellipse) > 0.9 and not (boxed.masks & round_).any()


def test_nested_objects_give_three_scales(predictor):
    shape = (256, 256)
    image = np.zeros(shape, np.uint8)
    radii = (55, 28, 10)  # the largest object a click search reaches is about half the image side
    for radius, value in zip(radii, (80, 160, 250)):
        image[disc(shape, 128, 128, radius)] = value
    predictor.set_image(image)
    prediction = predictor.predict(points=[[128, 128]], labels=[1])
    assert len(prediction.masks) == 3 and prediction.iou_scores.shape == (3,)
    for mask, radius, floor in zip(prediction.masks, sorted(radii), (0.75, 0.85, 0.85)):  # small, medium, large
        assert iou(mask, disc(shape, 128, 128, radius)) > floor, radius  # a 20 px disc at a 256 px input: 0.80
    one = predictor.predict(points=[[128, 128]], labels=[1], multimask=False)
    assert len(one.masks) == 1


def test_a_negative_click_excludes_the_touching_disc(predictor):
    shape = (256, 256)
    left, right = disc(shape, 98, 128, 30), disc(shape, 158, 128, 30)
    image = np.zeros(shape, np.uint8)
    image[left | right] = 200
    predictor.set_image(image)
    prediction = predictor.predict(points=[[98, 128], [158, 128]], labels=[1, 0])
    chosen = best(prediction)
    assert iou(chosen, left) > 0.75 and (chosen & right).sum() < 0.05 * right.sum()
    for mask in prediction.masks:  # no answer holds the negative click
        assert not mask[128, 158]


# ----------------------------------------------------------------- real objects


def test_one_click_on_each_coin(predictor):
    image, regions = coin_masks()
    predictor.set_image(image)
    ious = []
    for region in regions:
        truth = np.zeros(image.shape, bool)
        truth[tuple(region.coords.T)] = True
        ious.append(iou(best(predictor.predict(points=[interior_point(truth)], labels=[1])), truth))
    # measured 0.94 (15 of 24 coins of the benchmark's reference); a ground-truth box gives 0.95
    assert np.mean(ious) > 0.90 and np.min(ious) > 0.6, np.round(ious, 2)


def test_one_click_on_dsb_nuclei(predictor, dsb_nuclei):
    image, labels = dsb_nuclei
    predictor.set_image(image)
    ids = [i for i in np.unique(labels)[1:] if (labels == i).sum() >= 100][::6]  # every 6th nucleus
    ious = [iou(best(predictor.predict(points=[interior_point(labels == i)], labels=[1])), labels == i) for i in ids]
    # measured 0.51 on 15 nuclei (a ground-truth box at the 256 px input: 0.63); see docs/annotator.md
    assert len(ids) >= 15 and np.mean(ious) > 0.42, np.round(ious, 2)


def test_click_prompt_errors(predictor):
    predictor.set_image(np.zeros((64, 64), np.uint8))
    with pytest.raises(PromptError, match="one box"):
        predictor.predict(points=[[10, 10]], labels=[1], box=[[0, 0, 20, 20], [5, 5, 30, 30]])
    with pytest.raises(PromptError, match="mask prompts"):
        predictor.predict(points=[[10, 10]], labels=[1], mask_input=np.zeros((256, 256)))
