"""``generate_masks`` against Meta's ``SamAutomaticMaskGenerator``: same model, image, parameters.

The model. The only real weights available offline are LiteMedSAM's. Both sides
use its TinyViT image encoder (our module, the same object) and its prompt
encoder and mask decoder weights, loaded into our modules on one side and into
Meta's ``PromptEncoder``/``MaskDecoder`` on the other. LiteMedSAM was trained
single-mask, so its three multimask slots are untrained: their logits stay within
about 0.1 of zero and no mask survives any filter, which would make the
comparison empty. The parity state_dict therefore copies the trained slot 0 into
slots 1-3 (mask token and hypernetwork MLP, the last layer scaled by 2, 4 and 8,
so the three outputs differ in stability) and scales slot 0's IoU-head row by 1,
0.97 and 0.94 for them. The same state_dict is loaded on both sides.

Preprocessing. LiteMedSAM normalises min-max, Meta's predictor with mean/std; the
parity spec uses ImageNet mean/std on both sides (``dataclasses.replace`` on the
spec), so the encoder sees the same tensor.

Precision. The comparison is with the exact path: the default (``auto``) keeps the
point-grid generator in float32; the crop test asks for float32 explicitly.

Small-region removal needs OpenCV in the official code: the crop test installs
the scikit-image stand-in from ``test_amg_functions`` as ``cv2``.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pytest
import torch
from reference import official_lite_prompt_modules, official_segment_anything
from skimage import data, measure
from skimage.color import gray2rgb
from test_amg_functions import cv2_stand_in

import napari_sam
from napari_sam.automatic import Cancelled, edge_map, generate_masks
from napari_sam.automatic.edges import MaskLogits
from napari_sam.errors import SamkitError
from napari_sam.models.sam import SamModel
from napari_sam.registry import IMAGENET_MEAN, IMAGENET_STD

LOGIT_SCALES = (2.0, 4.0, 8.0)
IOU_SCALES = (1.0, 0.97, 0.94)
#: Thresholds low enough for LiteMedSAM's point masks (its IoU head says ~0.3-0.9).
LOW_THRESHOLDS = dict(pred_iou_thresh=0.3, stability_score_thresh=0.8)


def _parity_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in state.items()}
    prefix = "mask_decoder."
    state[prefix + "mask_tokens.weight"][1:] = state[prefix + "mask_tokens.weight"][0]
    head = prefix + "iou_prediction_head.layers.2."
    for slot in (1, 2, 3):
        for layer in range(3):
            for name in ("weight", "bias"):
                source = state[f"{prefix}output_hypernetworks_mlps.0.layers.{layer}.{name}"]
                scale = LOGIT_SCALES[slot - 1] if layer == 2 else 1.0
                state[f"{prefix}output_hypernetworks_mlps.{slot}.layers.{layer}.{name}"] = source * scale
        for name in ("weight", "bias"):
            state[head + name][slot] = state[head + name][0] * IOU_SCALES[slot - 1]
    return state


@pytest.fixture(scope="module")
def models():
    """``(ours, official)``: our SamModel and Meta's Sam with the same weights."""
    official_segment_anything()
    from segment_anything.modeling import Sam

    lite = napari_sam.load_model("lite_medsam")
    lite.load_state_dict(_parity_state_dict(lite.state_dict()))
    spec = dataclasses.replace(lite.spec, normalization="imagenet", prompt_types=("points", "boxes", "masks"))
    ours = SamModel(lite.image_encoder, lite.prompt_encoder, lite.mask_decoder, spec).eval()

    prompt_encoder, mask_decoder = official_lite_prompt_modules()
    prompt_encoder.load_state_dict(lite.prompt_encoder.state_dict())
    mask_decoder.load_state_dict(lite.mask_decoder.state_dict())
    official = Sam(
        image_encoder=lite.image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(IMAGENET_MEAN),
        pixel_std=list(IMAGENET_STD),
    ).eval()
    return ours, official


@pytest.fixture(scope="module")
def coins_rgb() -> np.ndarray:
    return np.ascontiguousarray(gray2rgb(data.coins())[:300, :380])


def _official_records(sam, image, **params) -> list[dict]:
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.utils.transforms import ResizeLongestSide

    generator = SamAutomaticMaskGenerator(sam, **params)
    generator.predictor.transform = ResizeLongestSide(256)
    return generator.generate(image)


def _assert_same_records(ours: list[dict], theirs: list[dict], shape) -> None:
    assert len(ours) == len(theirs) > 10
    for record in ours:
        assert set(record) == set(theirs[0])
        mask = record["segmentation"]
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == shape
        assert isinstance(record["area"], int) and record["area"] == int(mask.sum())
        assert len(record["bbox"]) == 4 and len(record["crop_box"]) == 4
        assert isinstance(record["predicted_iou"], float) and isinstance(record["stability_score"], float)
        assert np.shape(record["point_coords"]) == (1, 2)
    a = np.stack([r["segmentation"] for r in ours]).reshape(len(ours), -1).astype(np.float32)
    b = np.stack([r["segmentation"] for r in theirs]).reshape(len(theirs), -1).astype(np.float32)
    inter = a @ b.T
    iou = inter / (a.sum(1)[:, None] + b.sum(1)[None, :] - inter)
    match = iou.argmax(axis=1)
    # The same masks in the same order (the order of the official NMS).
    assert match.tolist() == list(range(len(ours)))
    assert iou[np.arange(len(ours)), match].min() >= 0.99
    identical = sum(np.array_equal(r["segmentation"], t["segmentation"]) for r, t in zip(ours, theirs))
    assert identical >= 0.9 * len(ours)
    for r, t in zip(ours, theirs):
        np.testing.assert_allclose(r["bbox"], t["bbox"], atol=1)
        assert abs(r["area"] - t["area"]) <= max(2, 0.01 * t["area"])
        assert r["predicted_iou"] == pytest.approx(t["predicted_iou"], abs=1e-4)
        assert r["stability_score"] == pytest.approx(t["stability_score"], abs=1e-2)
        np.testing.assert_allclose(r["point_coords"], t["point_coords"], rtol=0, atol=1e-9)
        assert r["crop_box"] == [int(v) for v in t["crop_box"]]


def test_whole_image_matches_official(models, coins_rgb):
    ours_model, official = models
    params = dict(points_per_side=8, **LOW_THRESHOLDS)
    theirs = _official_records(official, coins_rgb, **params)
    timings: dict = {}
    ours = generate_masks(coins_rgb, ours_model, timings=timings, **params)  # the default: float32 for the grid
    _assert_same_records(ours, theirs, coins_rgb.shape[:2])
    assert {"embed", "decode", "upsample_filter", "nms", "records", "total"} <= set(timings)
    assert timings["decode"] > 0 and timings["total"] >= timings["decode"]


def _small_parts(mask: np.ndarray, area: int) -> tuple[int, int]:
    """``(small holes, small islands other than a lone largest one)`` of an 8-connected mask."""
    holes = measure.label(~mask, connectivity=2)
    hole_sizes = np.bincount(holes.ravel())[1:]
    islands = measure.label(mask, connectivity=2)
    island_sizes = np.bincount(islands.ravel())[1:]
    small_islands = int((island_sizes < area).sum())
    if small_islands == len(island_sizes) == 1:
        small_islands = 0
    return int((hole_sizes < area).sum()), small_islands


def test_crops_and_small_region_removal_match_official(models, coins_rgb, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", cv2_stand_in())
    ours_model, official = models
    params = dict(
        points_per_side=6,
        crop_n_layers=1,
        crop_n_points_downscale_factor=3,
        min_mask_region_area=40,
        **LOW_THRESHOLDS,
    )
    theirs = _official_records(official, coins_rgb, **params)
    ours = generate_masks(coins_rgb, ours_model, precision="float32", **params)
    _assert_same_records(ours, theirs, coins_rgb.shape[:2])
    crops = {tuple(r["crop_box"]) for r in ours}
    assert len(crops) > 1  # masks from the whole image and from crops survived
    for record in ours:  # no small hole, no small island besides a lone one
        assert _small_parts(record["segmentation"], 40) == (0, 0)


def test_progress_cancel_logits_and_edges(models, coins_rgb):
    ours_model, _ = models
    params = dict(points_per_side=6, points_per_batch=10, **LOW_THRESHOLDS)
    calls: list[tuple[int, int]] = []
    records = generate_masks(
        coins_rgb, ours_model, progress=lambda done, total: calls.append((done, total)), return_logits=True, **params
    )
    total = math.ceil(36 / 10)
    assert calls == [(k, total) for k in range(1, total + 1)]
    assert len(records) >= 3
    for record in records:
        logits = record["logits"]
        assert isinstance(logits, MaskLogits) and logits.low_res.shape == (256, 256)
        # The kept logits give back exactly the mask (no small-region removal here).
        x0, y0, x1, y1 = logits.crop_box
        crop = record["segmentation"][y0:y1, x0:x1]
        assert torch.equal(logits.crop_logits() > 0, torch.from_numpy(crop))
        probability = logits.probability()
        assert probability.shape == coins_rgb.shape[:2] and 0 <= probability.min() <= probability.max() <= 1
    edges = edge_map(records)
    assert edges.shape == coins_rgb.shape[:2] and edges.dtype == np.float32
    assert edges.max() == pytest.approx(1.0) and edges.min() >= 0
    # Edges lie on mask boundaries: strong edges are near some mask's border.
    border = np.zeros(edges.shape, bool)
    for record in records:
        mask = record["segmentation"]
        border |= mask ^ np.pad(mask, 1, mode="edge")[2:, 1:-1]
        border |= mask ^ np.pad(mask, 1, mode="edge")[1:-1, 2:]
    near_border = np.zeros_like(border)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            near_border |= np.roll(border, (dy, dx), axis=(0, 1))
    strong = edges > 0.5
    assert strong.any() and near_border[strong].mean() > 0.9

    polls = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(Cancelled):
        generate_masks(coins_rgb, ours_model, cancel=cancel, **params)
    assert len(polls) == 3


def test_strategy_dispatch_and_parameter_errors(models, coins_rgb, monkeypatch):
    ours_model, _ = models
    from napari_sam.automatic import box_strategy

    seen = {}

    def fake_boxes(rgb, model, **kwargs):
        seen.update(kwargs, rgb=rgb, model=model)
        return ["from boxes"]

    monkeypatch.setattr(box_strategy, "segment_everything_with_boxes", fake_boxes)
    box_only = SamModel(
        ours_model.image_encoder,
        ours_model.prompt_encoder,
        ours_model.mask_decoder,
        dataclasses.replace(ours_model.spec, prompt_types=("boxes",)),
    )
    gray = data.coins()[:64, :80]
    assert generate_masks(gray, box_only, min_mask_region_area=7, pred_iou_thresh=0.5) == ["from boxes"]
    assert seen["model"] is box_only and seen["min_mask_region_area"] == 7 and seen["pred_iou_thresh"] == 0.5
    assert seen["rgb"].shape == (64, 80, 3) and seen["rgb"].dtype == np.uint8
    seen.clear()
    assert generate_masks(gray, ours_model, strategy="boxes") == ["from boxes"]
    seen.clear()
    # "auto" on a point model runs the grid (one point here).
    result = generate_masks(gray, ours_model, points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert not seen and isinstance(result, list)

    with pytest.raises(SamkitError, match="strategy"):
        generate_masks(gray, ours_model, strategy="everything")
    with pytest.raises(SamkitError, match="point_grids"):
        generate_masks(gray, ours_model, point_grids=[np.array([[0.5, 0.5]])], crop_n_layers=1)
    with pytest.raises(SamkitError, match="points_per_side"):
        generate_masks(gray, ours_model, points_per_side=0)
    with pytest.raises(SamkitError, match="no grid points"):
        generate_masks(gray, ours_model, points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4)


def test_prompts_without_a_kept_mask_are_not_upscaled(models, coins_rgb, monkeypatch):
    """Prompts whose three masks all have a predicted IoU below ``pred_iou_thresh`` skip the
    decoder's upscaling; the records are those of decoding every prompt in full."""
    from napari_sam.automatic import generator
    from napari_sam.models.mask_decoder import MaskDecoder

    ours_model, _ = models
    params = dict(points_per_side=8, pred_iou_thresh=0.8, stability_score_thresh=0.8, precision="float32")
    upscaled: list[int] = []
    upscale = MaskDecoder.upscale_masks

    def counting(self, keys, hyper_in, grid):
        upscaled.append(len(hyper_in))
        return upscale(self, keys, hyper_in, grid)

    monkeypatch.setattr(MaskDecoder, "upscale_masks", counting)
    skipping = generate_masks(coins_rgb, ours_model, **params)
    with_skips = sum(upscaled)
    upscaled.clear()
    decode = generator.decode_prompts
    monkeypatch.setattr(generator, "decode_prompts", lambda *args, min_iou=None, **kwargs: decode(*args, **kwargs))
    everything = generate_masks(coins_rgb, ours_model, **params)
    assert sum(upscaled) == 64 and 0 < with_skips < 64
    assert len(skipping) == len(everything) > 0
    for ours, full in zip(skipping, everything):
        assert np.array_equal(ours["segmentation"], full["segmentation"])
        assert ours["predicted_iou"] == full["predicted_iou"]
        assert ours["stability_score"] == pytest.approx(full["stability_score"], abs=1e-6)
