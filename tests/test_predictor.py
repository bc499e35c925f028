"""Predictor on real images: embedded default on coins, parity with the official predictor."""

import numpy as np
import pytest
import torch
from coins_reference import box_xyxy, coin_masks, iou
from reference import official_mobile_sam
from skimage import data

from napari_sam import Predictor, load_model
from napari_sam.errors import ImageError, PromptError


@pytest.fixture(scope="module")
def coins_predictor():
    predictor = Predictor(load_model("lite_medsam"))
    image, regions = coin_masks()
    predictor.set_image(image)
    return predictor, image, regions


def test_box_around_a_coin_gives_the_coin(coins_predictor):
    predictor, image, regions = coins_predictor
    region = max(regions, key=lambda r: r.area)
    reference = np.zeros(image.shape, bool)
    reference[tuple(region.coords.T)] = True
    masks, scores, logits = predictor.predict(box=box_xyxy(region))
    assert masks.shape == (1,) + image.shape and masks.dtype == bool
    assert scores.shape == (1,) and logits.shape == (1, 256, 256)
    assert iou(masks[0], reference) >= 0.9


def test_batched_boxes_one_object_each(coins_predictor):
    predictor, image, regions = coins_predictor
    boxes = np.array([box_xyxy(r) for r in regions])
    masks, scores, logits = predictor.predict(box=boxes)
    assert masks.shape == (len(regions), 1) + image.shape
    ious = []
    for region, mask in zip(regions, masks[:, 0]):
        reference = np.zeros(image.shape, bool)
        reference[tuple(region.coords.T)] = True
        ious.append(iou(mask, reference))
    # plain 256-px input: most coins right; zoomed crops (segment_boxes) do better
    assert np.median(ious) >= 0.85, ious


def test_mask_input_refines_and_multimask_switch(coins_predictor):
    predictor, image, regions = coins_predictor
    box = box_xyxy(regions[0])
    first = predictor.predict(box=box)
    again = predictor.predict(box=box, mask_input=first.low_res_logits)
    assert again.masks.shape == first.masks.shape
    assert iou(again.masks[0], first.masks[0]) > 0.8
    three = predictor.predict(box=box, multimask=True)
    assert three.masks.shape[0] == 3 and three.iou_scores.shape == (3,)


def test_points_on_a_box_only_model_give_the_clicked_coin(coins_predictor):
    predictor, image, regions = coins_predictor
    region = max(regions, key=lambda r: r.area)
    reference = np.zeros(image.shape, bool)
    reference[tuple(region.coords.T)] = True
    y, x = region.centroid
    masks, scores, logits = predictor.predict(points=[[x, y]], labels=[1])  # no warning: box search
    assert 1 <= len(masks) <= 3 and scores.shape == (len(masks),) and logits.shape == (len(masks), 256, 256)
    assert iou(masks[int(np.argmax(scores))], reference) >= 0.9


def test_boxes_are_clipped_to_the_image(coins_predictor):
    predictor, image, regions = coins_predictor  # coins: 384 x 303 (width x height)
    inside = predictor.predict(box=[320, 240, 384, 303]).masks[0].sum()
    assert predictor.predict(box=[320, 240, 2000, 2000]).masks[0].sum() == inside
    region = regions[0]
    x0, y0, x1, y1 = box_xyxy(region)
    far = predictor.predict(box=[-1e9, -1e9, x1, y1]).masks[0]
    assert far.sum() == predictor.predict(box=[0, 0, x1, y1]).masks[0].sum() and far.any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "at least one prompt"),
        (dict(box=[1, 2, 3]), r"\(x0, y0, x1, y1\)"),
        (dict(box=[5000, 5000, 6000, 6000]), "outside"),
        (dict(box=[1, 2, np.nan, 4]), "finite"),
        (dict(points=[[10, 10]]), "need labels"),
        (dict(points=[[10, 10], [20, 20]], labels=[1]), "2 points but 1 labels"),
        (dict(points=[[10, 10]], labels=[2]), "1 \\(foreground\\) or 0"),
        (dict(box=[10, 10, 50, 50], mask_input=np.zeros((64, 64))), "256 x 256"),
        (dict(box="10 10 50 50"), "must be numbers"),
        (dict(box=np.zeros((0, 4))), "No boxes"),
        (dict(box=[1, 2, 3, 4, 5]), r"\(x0, y0, x1, y1\)"),
        (dict(points="10,10", labels=[1]), "must be numbers"),
        (dict(points=[[10, 20, 30], [40, 50, 60]], labels=[1, 1]), "N x 2.*transpose"),
        (dict(points=[10, 20, 30], labels=[1]), "N x 2"),
        (dict(points=[[10, 10]], labels=["yes"]), "must be numbers"),
        (dict(box=[10, 10, 50, 50], mask_input="logits"), "must be numbers"),
    ],
)
def test_bad_prompts(coins_predictor, kwargs, message):
    predictor = coins_predictor[0]
    with pytest.raises(PromptError, match=message):
        predictor.predict(**kwargs)


def test_predict_before_set_image():
    with pytest.raises(PromptError, match="call set_image"):
        Predictor(load_model("lite_medsam")).predict(box=[0, 0, 5, 5])


def test_stacks_are_rejected():
    predictor = Predictor(load_model("lite_medsam"))
    with pytest.raises(ImageError, match="3D stack"):
        predictor.set_image(np.zeros((8, 64, 64), np.uint16))


@pytest.mark.parametrize(
    "image",
    [
        data.coins().astype(np.uint16) * 250,
        data.coins().astype(np.float32) / 255.0 - 0.5,
        np.dstack([data.coins()] * 3),
        np.dstack([data.coins()] * 3 + [np.full(data.coins().shape, 255, np.uint8)]),
    ],
    ids=["uint16", "float-negative", "rgb", "rgba"],
)
def test_dtypes_and_channels_give_the_same_coin(coins_predictor, image):
    reference_predictor, coins, regions = coins_predictor
    region = max(regions, key=lambda r: r.area)
    expected = reference_predictor.predict(box=box_xyxy(region)).masks[0]
    predictor = Predictor(reference_predictor.model)
    predictor.set_image(image)
    assert iou(predictor.predict(box=box_xyxy(region)).masks[0], expected) >= 0.95


def test_constant_and_nan_images_do_not_crash():
    predictor = Predictor(load_model("lite_medsam"))
    for image in (np.zeros((50, 60)), np.full((50, 60), np.nan)):
        predictor.set_image(image)
        masks = predictor.predict(box=[5, 5, 40, 30]).masks
        assert masks.shape == (1, 50, 60)


def test_end_to_end_parity_with_the_official_predictor_mobilesam():
    """Same random MobileSAM weights: our Predictor == official SamPredictor (pre/post-processing included)."""
    mobile_sam = official_mobile_sam()
    torch.manual_seed(0)
    official = mobile_sam.sam_model_registry["vit_t"]().eval()
    with torch.no_grad():  # give BatchNorm statistics non-trivial values
        for module in official.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    from napari_sam.loading import model_from_state_dict

    ours = model_from_state_dict(official.state_dict(), __import__("napari_sam").get_spec("vit_t"), "test")
    image = data.astronaut()[60:360, 100:500]  # 300 x 400 RGB, uint8
    theirs = mobile_sam.SamPredictor(official)
    theirs.set_image(image)
    mine = Predictor(ours)
    mine.set_image(image)
    their_features = theirs.get_image_embedding()
    error = (mine.embedding.features - their_features).abs().max() / their_features.abs().max()
    assert error <= 1e-4
    prompts = [
        dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1])),
        dict(box=np.array([120.0, 40.0, 300.0, 260.0])),
        dict(point_coords=np.array([[200.0, 150.0], [130, 60]]), point_labels=np.array([1, 0]),
             box=np.array([120.0, 40.0, 300.0, 260.0])),
    ]
    for prompt in prompts:
        masks_t, scores_t, logits_t = theirs.predict(multimask_output=True, **prompt)
        masks_m, scores_m, logits_m = mine.predict(
            points=prompt.get("point_coords"), labels=prompt.get("point_labels"), box=prompt.get("box"), multimask=True
        )
        np.testing.assert_allclose(scores_m, scores_t, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(logits_m, logits_t, rtol=1e-3, atol=1e-3 * np.abs(logits_t).max())
        assert (masks_m != masks_t).mean() < 1e-4


def test_one_click_alone_gives_three_masks_more_prompts_one():
    """On a model trained on clicks, only the ambiguous prompt (one click alone) gets the three
    multimask outputs; two clicks, or a click with the earlier logits, get the single-mask token
    (the one trained on correction clicks), as in the paper."""
    import dataclasses

    model = load_model("lite_medsam")  # a fresh instance: its spec is ours to change
    model.spec = dataclasses.replace(model.spec, prompt_types=("boxes", "points", "masks"))
    predictor = Predictor(model)
    image, regions = coin_masks()
    predictor.set_image(image)
    y, x = regions[0].centroid
    one = predictor.predict(points=[[x, y]], labels=[1])
    assert one.masks.shape[0] == 3
    two = predictor.predict(points=[[x, y], [x + 2, y]], labels=[1, 1])
    assert two.masks.shape[0] == 1
    fed = predictor.predict(points=[[x, y]], labels=[1], mask_input=one.low_res_logits[0])
    assert fed.masks.shape[0] == 1
    assert predictor.predict(points=[[x, y], [x + 2, y]], labels=[1, 1], multimask=True).masks.shape[0] == 3


def test_a_thin_strip_is_embedded_at_least_one_pixel_tall(lite_medsam):
    """A 10 x 10000 strip is 0.256 px tall at the 256 px input: PIL refused a height of 0."""
    strip = np.zeros((10, 10000), np.uint8)
    strip[2:8, 4000:4100] = 200
    predictor = Predictor(lite_medsam)
    embedding = predictor.set_image(strip)
    assert embedding.input_size == (1, 256)
    masks = predictor.predict(box=[3990, 0, 4110, 10]).masks
    assert masks.shape == (1, 10, 10000)
