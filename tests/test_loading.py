"""load_model: registry names, checkpoint files, detection, and clear errors."""

import os
import subprocess
import sys

import pytest
import torch

from napari_sam import load_model
from napari_sam.errors import CheckpointError, UnknownModelError
from napari_sam.loading import detect_architecture, read_state_dict
from napari_sam.registry import get_spec
from napari_sam.weights import embedded_weights_path


@pytest.fixture(scope="module")
def lite_state_dict():
    return torch.load(embedded_weights_path(get_spec("lite_medsam")), map_location="cpu", weights_only=True)


def test_default_model_loads_offline_from_the_embedded_weights():
    model = load_model()
    assert model.spec.name == "lite_medsam" and model.spec.image_size == 256
    assert not model.training
    assert str(model.device) == "cpu"


def test_checkpoint_file_is_detected_without_model_type(tmp_path, lite_state_dict):
    path = tmp_path / "renamed.pth"
    torch.save({"model": lite_state_dict}, path)  # wrapped as training scripts save it
    model = load_model(path)
    assert model.spec.architecture == "lite_medsam" and model.spec.name == "renamed"
    assert model.spec.normalization == "minmax" and model.spec.sha256 == ""
    reference = load_model("lite_medsam")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_detection_by_shapes(lite_state_dict):
    assert detect_architecture(lite_state_dict) == "lite_medsam"
    mobile = dict(lite_state_dict)
    mobile["image_encoder.patch_embed.seq.0.c.weight"] = torch.zeros(32, 3, 3, 3)
    assert detect_architecture(mobile) == "vit_t"
    for width, name in ((768, "vit_b"), (1024, "vit_l"), (1280, "vit_h")):
        vit = {"mask_decoder.x": torch.zeros(1), "image_encoder.patch_embed.proj.weight": torch.zeros(width, 3, 16, 16)}
        assert detect_architecture(vit) == name
    assert detect_architecture({"fc.weight": torch.zeros(2)}) is None


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="Known models: lite_medsam, vit_b"):
        load_model("vit_x")


def test_empty_truncated_and_foreign_files(tmp_path, lite_state_dict):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty)
    full = tmp_path / "full.pth"
    torch.save(lite_state_dict, full)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth .*not a readable PyTorch checkpoint"):
        load_model(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(text)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)}, foreign)
    with pytest.raises(CheckpointError, match="Cannot tell which Segment Anything architecture"):
        load_model(foreign)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="not a Segment Anything state_dict"):
        read_state_dict(listing)


def test_mismatched_architecture_names_expected_and_found(tmp_path, lite_state_dict):
    path = tmp_path / "lite.pth"
    torch.save(lite_state_dict, path)
    with pytest.raises(CheckpointError) as error:
        load_model(path, model_type="vit_t")
    message = str(error.value)
    assert "does not match the vit_t architecture" in message
    assert "detected: lite_medsam" in message
    assert "missing" in message or "of another shape" in message
    broken = dict(lite_state_dict)
    broken.pop("mask_decoder.iou_token.weight")
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match="1 missing, e.g. mask_decoder.iou_token.weight"):
        load_model(path)
    with pytest.raises(CheckpointError, match="Unknown model_type"):
        load_model(path, model_type="vit_q")
    with pytest.raises(CheckpointError, match="is a lite_medsam model, not vit_b"):
        load_model("lite_medsam", model_type="vit_b")


def test_bad_device():
    with pytest.raises(CheckpointError, match="Unknown device"):
        load_model("lite_medsam", device="gpu0")


def test_import_is_cheap():
    code = "import sys, napari_sam; print('torch' in sys.modules, 'napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ})
    assert out.stdout.split() == ["False", "False"]


def test_core_never_imports_napari_or_qt():
    code = (
        "import sys; import napari_sam.predictor, napari_sam.cli, napari_sam.loading, napari_sam.io;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("spoil, message", [
    (lambda t: t.to(torch.int64), "not floating point"),
    (lambda t: t.bool(), "not floating point"),
    (lambda t: t.clone().index_fill_(0, torch.tensor([0]), float("nan")), "NaN or infinite"),
    (lambda t: t.to_sparse(), "sparse"),
])
def test_weights_that_would_compute_garbage_are_refused(tmp_path, lite_state_dict, spoil, message):
    name = "mask_decoder.iou_prediction_head.layers.0.weight"
    spoiled = dict(lite_state_dict)
    spoiled[name] = spoil(spoiled[name])
    path = tmp_path / "spoiled.pth"
    torch.save(spoiled, path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_a_registry_name_means_the_registry_even_with_a_file_of_that_name_here(tmp_path, monkeypatch,
                                                                               lite_state_dict):
    spoiled = dict(lite_state_dict)
    spoiled["mask_decoder.iou_prediction_head.layers.0.weight"] = torch.zeros_like(
        spoiled["mask_decoder.iou_prediction_head.layers.0.weight"])
    torch.save(spoiled, tmp_path / "lite_medsam")  # planted in the current folder, unverified
    monkeypatch.chdir(tmp_path)
    model = load_model("lite_medsam")
    assert model.spec.sha256 == get_spec("lite_medsam").sha256 and model.spec.embedded_in  # the verified weights
    assert bool(model.mask_decoder.iou_prediction_head.layers[0].weight.abs().sum() > 0)
    local = load_model("./lite_medsam")  # a path: the file, as asked
    assert not bool(local.mask_decoder.iou_prediction_head.layers[0].weight.abs().sum() > 0)
