"""Fine-tuning: losses, prompt simulation, data, settings, a real short run, saving, resuming."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from napari_sam.embedding import EmbeddingCache
from napari_sam.errors import SamkitError, TrainingError
from napari_sam.training import FineTuneSettings, fine_tune, load_training_images, planes_of, split_by_image
from napari_sam.training.losses import dice_loss, focal_loss, mask_iou, sam_loss
from napari_sam.training.prompts import correction_points, interior_points, noisy_boxes, points_inside


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# --------------------------------------------------------------------- losses


def test_mask_iou_and_dice_on_known_masks():
    target = torch.zeros(1, 8, 8)
    target[0, :4, :4] = 1  # 16 pixels
    logits = torch.full((1, 1, 8, 8), -50.0)
    logits[0, 0, :4, :2] = 50.0  # 8 pixels, all inside the target
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    assert float(mask_iou(logits, target, valid)) == pytest.approx(0.5)
    # Hard probabilities: dice = 1 - (2 * 8 + 1) / (8 + 16 + 1).
    assert float(dice_loss(logits, target, valid)) == pytest.approx(1 - 17 / 25, abs=1e-6)
    # Padding is left out: only the valid columns count.
    valid[:, :, 2:] = False
    assert float(mask_iou(logits, target, valid)) == pytest.approx(1.0)


def test_focal_loss_is_small_when_right_and_large_when_wrong():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    right = (target[:, None] * 2 - 1) * 10
    assert float(focal_loss(right, target, valid)) < 1e-6
    assert float(focal_loss(-right, target, valid)) > 1.0
    # At logit 0 every pixel has p_t = 0.5: mean of alpha_t * log(2) * 0.25.
    zero = torch.zeros(1, 1, 4, 4)
    expected = 0.5 * (0.25 + 0.75) * math.log(2) * 0.25
    assert float(focal_loss(zero, target, valid)) == pytest.approx(expected, rel=1e-5)


def test_sam_loss_trains_the_best_of_three_and_the_iou_head_on_all():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 10
    logits = torch.stack([-good[0], good[0], torch.zeros(8, 8)])[None]
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    iou_pred = torch.tensor([[0.3, 1.0, 0.0]])
    loss, best, iou = sam_loss(logits, iou_pred, target, valid)
    assert int(best) == 1
    assert iou[0].tolist() == pytest.approx([0.0, 1.0, 0.0])  # logits of 0 are not > 0: an empty mask
    # The loss is the best output's mask loss (about 0) plus the IoU head's error on all three.
    assert float(loss) == pytest.approx(float(((iou_pred - iou) ** 2).mean()), abs=1e-3)


# -------------------------------------------------------------------- prompts


def test_noisy_boxes_stay_in_the_image_and_move_by_the_asked_share():
    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[50.0, 50.0, 150.0, 110.0]]).repeat(4000, 1)
    assert torch.equal(noisy_boxes(boxes, 0.0, generator, torch.tensor([256.0, 256.0])), boxes)
    moved = noisy_boxes(boxes, 0.1, generator, torch.tensor([[140.0, 256.0]]).expand(4000, 2))
    assert (moved[:, 2] <= 140).all() and (moved[:, 0] >= 0).all() and (moved[:, 2] > moved[:, 0]).all()
    shift = (moved - boxes)[:, 1]  # y0: side 60 -> standard deviation 6 px
    assert float(shift.std()) == pytest.approx(6.0, rel=0.1)
    large = noisy_boxes(boxes, 1.0, generator, torch.tensor([1000.0, 1000.0]))
    assert float((large - boxes).abs().max()) <= 20.0 + 1e-4  # at most 20 px, as in the paper


def test_points_fall_inside_objects_and_interior_points_at_the_centre():
    generator = torch.Generator().manual_seed(1)
    mask = torch.from_numpy(_disc((64, 64), (20, 40), 6)).float()[None].repeat(50, 1, 1)
    points = points_inside(mask, 4.0, generator)  # input frame: 4 px per low-res pixel
    cols = (points[:, 0, 0] / 4 - 0.5).long()
    rows = (points[:, 0, 1] / 4 - 0.5).long()
    assert mask[0, rows, cols].all()
    centre = interior_points(mask[:1], 4.0)[0, 0]
    assert centre.tolist() == pytest.approx([(40 + 0.5) * 4, (20 + 0.5) * 4])


def test_correction_clicks_come_from_the_error_region():
    generator = torch.Generator().manual_seed(2)
    truth = torch.zeros(3, 16, 16)
    truth[:, 4:12, 4:12] = 1
    predicted = truth.bool().clone()
    predicted[0, 4:12, 4:8] = False  # missed foreground -> positive click there
    predicted[1, 0:2, :] = True  # spill-over -> negative click there
    coords, labels = correction_points(predicted, truth, 1.0, generator)
    assert labels[:, 0].tolist() == [1, 0, -1]  # the third mask is right: a padding point
    x, y = (coords[0, 0] - 0.5).long().tolist()
    assert 4 <= x < 8 and 4 <= y < 12
    x, y = (coords[1, 0] - 0.5).long().tolist()
    assert y < 2


# ----------------------------------------------------------------------- data


def test_stacks_become_planes_with_objects_and_mismatches_are_refused():
    image = np.random.default_rng(0).random((3, 32, 40))
    labels = np.zeros((3, 32, 40), np.uint16)
    labels[0, 5:10, 5:10] = 1
    labels[2, 20:30, 20:30] = 4
    planes = planes_of(image, labels, "stack.tif")
    assert [p.name for p in planes] == ["stack.tif[0]", "stack.tif[2]"]
    assert planes[1].object_ids.tolist() == [4]
    rgb = np.zeros((32, 40, 3), np.uint8)
    assert len(planes_of(rgb, labels[0], "rgb")) == 1
    with pytest.raises(TrainingError, match="same height and width"):
        planes_of(rgb, labels[0, :30], "rgb")
    with pytest.raises(TrainingError, match="not integers"):
        planes_of(image[0], labels[0] + 0.5, "float")


def test_folders_pair_images_with_their_label_files(tmp_path):
    import tifffile

    for i in range(3):
        labels = np.zeros((20, 20), np.uint16)
        labels[2:8, 2:8] = i + 1
        tifffile.imwrite(tmp_path / f"cell_{i}.tif", np.full((20, 20), i, np.uint8))
        tifffile.imwrite(tmp_path / f"cell_{i}_labels.tif", labels)
    items = load_training_images(tmp_path)
    assert [i.name.split("/")[-1] for i in items] == ["cell_0.tif", "cell_1.tif", "cell_2.tif"]
    assert [int(i.image[0, 0]) for i in items] == [0, 1, 2]
    assert [i.object_ids.tolist() for i in items] == [[1], [2], [3]]
    (tmp_path / "cell_1_labels.tif").unlink()
    with pytest.raises(TrainingError, match="No label image found for .*cell_1.tif"):
        load_training_images(tmp_path)


def test_split_is_by_image_and_seeded():
    items = planes_of(np.zeros((6, 8, 8)), np.ones((6, 8, 8), np.int32), "a.tif")
    items += [planes_of(np.zeros((8, 8)), np.ones((8, 8), np.int32), f"b{i}.tif")[0] for i in range(4)]
    train, val = split_by_image(items, 0.4, seed=3)
    sources = lambda group: {i.name.split("[")[0] for i in group}  # noqa: E731
    assert not sources(train) & sources(val)
    assert len(sources(val)) == 2 and len(sources(train)) == 3
    assert [i.name for i in split_by_image(items, 0.4, seed=3)[1]] == [i.name for i in val]
    assert split_by_image(items[:6], 0.5)[1] == []  # one source image: no validation set


# ------------------------------------------------------------------- settings


def test_settings_are_checked_in_one_place_and_make_the_cli_flags():
    import argparse

    from napari_sam.training.settings import add_arguments, from_arguments

    with pytest.raises(TrainingError, match="learning_rate must be between"):
        FineTuneSettings(learning_rate=5.0).check()
    with pytest.raises(TrainingError, match="epochs must be a whole number"):
        FineTuneSettings(epochs=2.5).check()
    with pytest.raises(TrainingError, match="Unknown fine-tuning setting"):
        FineTuneSettings().with_values(epoch=3)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--epochs", "3", "--no-zoom", "--point-fraction", "0.25"])
    assert from_arguments(args) == FineTuneSettings(epochs=3, zoom=False, point_fraction=0.25)


# ------------------------------------------------------------- a real short run


def synthetic_cells(seed: int, n: int = 6, size: int = 128):
    """A fluorescence-like plane: ``n`` bright ellipses of 8-16 px radius on noise, and their labels."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.15, 0.05, (size, size))
    labels = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[:size, :size]
    placed = 0
    while placed < n:
        cy, cx = rng.uniform(18, size - 18, 2)
        ry, rx = rng.uniform(8, 16, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if labels[inside].any():
            continue
        placed += 1
        labels[inside] = placed
        image[inside] += rng.uniform(0.5, 0.8)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), labels


QUICK = FineTuneSettings(epochs=4, correction_rounds=1, objects_per_step=4, zoom=False, patience=5,
                         learning_rate=5e-4, min_steps_per_epoch=0)


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("NAPARI_SAMKIT_MODELS", str(folder))
    return folder


@pytest.fixture(scope="module")
def cell_planes():
    pairs = [synthetic_cells(seed, n=10) for seed in range(4)]
    return load_training_images([p[0] for p in pairs], [p[1] for p in pairs])


@pytest.fixture(scope="module")
def trained(cell_planes, tmp_path_factory):
    """One real 4-epoch run of the default model, shared by the tests that inspect its result."""
    import os

    folder = tmp_path_factory.mktemp("models")
    os.environ["NAPARI_SAMKIT_MODELS"] = str(folder)
    events = []
    try:
        result = fine_tune(cell_planes[:3], validation=cell_planes[3:], name="cells-v1", settings=QUICK,
                           progress=events.append, embedding_cache=EmbeddingCache())
        yield result, events, folder
    finally:
        os.environ.pop("NAPARI_SAMKIT_MODELS", None)


def test_a_short_run_teaches_the_default_model_to_click(trained):
    result, events, _ = trained
    base, best = result.history[0], result.best
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3, 4]
    # LiteMedSAM was trained on boxes only: one click gives almost nothing before.
    assert base["click_iou"] < 0.3
    assert best["click_iou"] > base["click_iou"] + 0.4  # measured: 0.03 -> 0.85
    assert best["box_iou"] > base["box_iou"] - 0.05
    stages = {e.stage for e in events}
    assert {"embedding", "training", "epoch", "done"} <= stages
    assert any(e.stage == "training" and e.seconds_left is not None and e.loss > 0 for e in events)


def test_the_result_is_a_registered_model_in_the_official_layout(trained, monkeypatch):
    from napari_sam import Predictor, list_models, load_model
    from napari_sam.loading import read_state_dict
    from napari_sam.registry import get_spec
    from napari_sam.weights import embedded_weights_path

    result, _, folder = trained
    monkeypatch.setenv("NAPARI_SAMKIT_MODELS", str(folder))
    metadata = json.loads(result.metadata.read_text())
    assert metadata["base_model"] == "lite_medsam" and metadata["prompt_types"] == ["boxes", "points", "masks"]
    assert metadata["validation"]["best"]["epoch"] == result.best_epoch
    assert "cells-v1" in [spec.name for spec in list_models()]
    saved = read_state_dict(result.checkpoint)
    official = read_state_dict(embedded_weights_path(get_spec("lite_medsam")))
    assert saved.keys() == official.keys()
    # The encoder is the base's, bit for bit; the decoder has learned.
    for key in official:
        if key.startswith("image_encoder."):
            assert torch.equal(saved[key], official[key]), key
    assert not torch.equal(saved["mask_decoder.iou_token.weight"], official["mask_decoder.iou_token.weight"])
    model = load_model("cells-v1")
    assert model.spec.supports_points and model.spec.automatic_strategy == "boxes"
    # It loads where a base checkpoint loads: by path too.
    assert load_model(str(result.checkpoint)).spec.architecture == "lite_medsam"
    # Clicks now work through the Predictor: three masks, the best one is the object.
    image, labels = synthetic_cells(7)
    predictor = Predictor(model)
    predictor.set_image(image)
    ids = [i for i in np.unique(labels) if i]
    ious = []
    for object_id in ids:
        from scipy import ndimage

        mask = labels == object_id
        distance = ndimage.distance_transform_edt(mask)
        row, col = np.unravel_index(np.argmax(distance), mask.shape)
        masks, scores, _ = predictor.predict(points=[[col, row]], labels=[1])
        assert masks.shape == (3, *labels.shape)
        best = masks[int(np.argmax(scores))]
        ious.append((best & mask).sum() / (best | mask).sum())
    assert np.mean(ious) > 0.6


def test_a_damaged_checkpoint_of_a_user_model_is_refused(trained, tmp_path, monkeypatch):
    import shutil

    from napari_sam import load_model

    result, _, folder = trained
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".runs"))
    monkeypatch.setenv("NAPARI_SAMKIT_MODELS", str(copy))
    path = copy / "cells-v1.pth"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SamkitError, match="SHA-256"):
        load_model("cells-v1")


def test_names_are_checked_before_any_work(cell_planes, models_dir):
    with pytest.raises(SamkitError, match="built-in model"):
        fine_tune(cell_planes, name="vit_b")
    with pytest.raises(SamkitError, match="not usable"):
        fine_tune(cell_planes, name="../escape")


def test_cancel_keeps_the_best_epoch_and_the_same_call_resumes(cell_planes, models_dir, tmp_path, monkeypatch):
    import napari_sam.inference

    calls = {"steps": 0, "encoder": 0}
    encode = napari_sam.inference.embed_image

    def counting_encoder(*args, **kwargs):
        calls["encoder"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(napari_sam.inference, "embed_image", counting_encoder)
    store = tmp_path / "embeddings"

    def cancel_after_one_epoch() -> bool:
        return calls["steps"] >= 1

    def count(event) -> None:
        if event.stage == "epoch" and event.epoch == 1:
            calls["steps"] = 1

    settings = QUICK.with_values(epochs=3)
    first = fine_tune(cell_planes[:2], validation=cell_planes[2:], name="resumable", settings=settings,
                      progress=count, cancel=cancel_after_one_epoch, embedding_store=store)
    assert first.stopped == "cancelled"
    assert calls["encoder"] == len(cell_planes) and len(list(store.iterdir())) == len(cell_planes)
    assert [h["epoch"] for h in first.history] == [0, 1]
    assert first.checkpoint.is_file()
    epochs_seen = []
    second = fine_tune(cell_planes[:2], validation=cell_planes[2:], name="resumable", settings=settings,
                       progress=lambda e: e.stage == "training" and epochs_seen.append(e.epoch),
                       embedding_store=store)
    assert second.stopped == "completed"
    assert calls["encoder"] == len(cell_planes)  # the resumed run read every view from the store
    assert sorted(set(epochs_seen)) == [2, 3]  # epoch 1 was not trained again
    assert second.history[1] == first.history[1]
    with pytest.raises(TrainingError, match="other data"):
        fine_tune(cell_planes[1:], validation=cell_planes[:1], name="resumable", settings=settings)
    with pytest.raises(TrainingError, match="exists already"):
        fine_tune(cell_planes[1:], validation=cell_planes[:1], name="resumable", settings=settings, resume=False)


def test_a_few_objects_are_drawn_again_until_an_epoch_has_its_minimum_of_steps():
    from types import SimpleNamespace

    from napari_sam.training.trainer import _epoch_batches

    views = [SimpleNamespace(source="a", object_ids=np.array([1, 2, 3])),  # whole image
             SimpleNamespace(source="a", object_ids=np.array([2]))]  # a zoomed window of object 2
    rng = np.random.default_rng(0)
    many = _epoch_batches(views, FineTuneSettings(objects_per_step=2, min_steps_per_epoch=5), rng)
    assert len(many) == 6  # three passes of 3 objects in steps of 2 (2 + 1 each)
    drawn = [int(view.object_ids[row]) for batch in many for view, row in batch]
    assert sorted(drawn) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    once = _epoch_batches(views, FineTuneSettings(objects_per_step=2, min_steps_per_epoch=0), rng)
    assert sorted(int(v.object_ids[r]) for batch in once for v, r in batch) == [1, 2, 3]


def test_training_works_after_prediction_in_the_same_process():
    """Inference runs under ``torch.inference_mode``: nothing it caches in the model may reach a backward pass.

    (A cached pixel-order index of the decoder's upscaling once did, and the Fine-tune
    widget failed after the annotator had been used in the same napari session.)
    """
    from napari_sam import Predictor, load_model

    image, labels = synthetic_cells(0, n=4)
    model = load_model("lite_medsam")
    predictor = Predictor(model)
    predictor.set_image(image)
    predictor.predict(box=np.array([10, 10, 60, 60]))  # fills the inference-time caches
    features = predictor.embedding.features.clone()
    boxes = torch.tensor([[[10.0, 10.0], [60.0, 60.0]]]) * (predictor.embedding.image_size / image.shape[0])
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes.reshape(1, 4), masks=None)
    masks, iou = model.mask_decoder(features, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)
    (masks.float().mean() + iou.float().mean()).backward()
    grads = [p.grad for p in model.mask_decoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[-4:])
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
