"""Parity of our SAM modules with Meta's ``segment_anything.modeling``.

Each official module is built with a fixed seed, its parameters that start as
constants (zero relative-position tables and position embedding, unit/zero norms)
are filled with random values so that every parameter influences the output, and
its state_dict is loaded into ours with ``strict=True``. Both then run on the same
inputs and must agree to a relative error of 1e-4 in float32.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from reference import official_segment_anything
from skimage import data
from skimage.transform import resize
from torch import nn

from napari_sam.errors import ImageError, PromptError
from napari_sam.models import image_encoder as image_encoder_module
from napari_sam.models.build import VIT_CONFIGS, build_image_encoder, build_model
from napari_sam.models.image_encoder import ImageEncoderViT
from napari_sam.models.mask_decoder import MaskDecoder
from napari_sam.models.prompt_encoder import PromptEncoder
from napari_sam.models.transformer import TwoWayTransformer
from napari_sam.registry import get_spec

RTOL = 1e-4
SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def official():
    return official_segment_anything().modeling


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def randomise_constant_parameters(module: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter initialised to a constant (zeros, ones) so it matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.numel() > 1 and bool(torch.all(param == param.flatten()[0])):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return module


def twin(official_module: nn.Module, ours: nn.Module) -> nn.Module:
    """``ours`` with the official module's weights (strict key and shape check)."""
    ours.load_state_dict(official_module.state_dict(), strict=True)
    return ours.eval()


def astronaut_input(side: int, batch: int = 1) -> torch.Tensor:
    """A real photograph as SAM's normalised ``batch x 3 x side x side`` input."""
    image = resize(data.astronaut(), (side, side), preserve_range=True, anti_aliasing=True)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
    tensor = (tensor - SAM_MEAN) / SAM_STD
    return torch.cat([tensor, tensor.flip(-1)])[:batch] if batch > 1 else tensor


# ----------------------------------------------------------------------------- image encoder


def official_vit(official, name: str) -> nn.Module:
    """The official encoder with the arguments of ``segment_anything.build_sam``."""
    embed_dim, depth, heads, global_blocks = {
        "vit_b": (768, 12, 12, [2, 5, 8, 11]),
        "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
        "vit_h": (1280, 32, 16, [7, 15, 23, 31]),
    }[name]
    return official.ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=1024,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_blocks,
        window_size=14,
        out_chans=256,
    )


def test_vit_b_encoder_matches_official_at_1024(official):
    torch.manual_seed(0)
    reference = randomise_constant_parameters(official_vit(official, "vit_b"), seed=1).eval()
    ours = twin(reference, build_image_encoder("vit_b"))
    image = astronaut_input(1024)
    with torch.inference_mode():
        expected = reference(image)
        got = ours(image)
    assert got.shape == (1, 256, 64, 64)
    assert relative_error(got, expected) <= RTOL


SMALL_VITS = {
    # SAM's layout: windowed blocks (16x16 grid padded to 28x28) around a global one.
    "windowed+global, rel pos": dict(use_rel_pos=True, window_size=14, global_attn_indexes=(1,)),
    # Windows that tile the grid exactly, no position biases.
    "windowed, no rel pos": dict(use_rel_pos=False, window_size=8, global_attn_indexes=(2,)),
    # Only global attention, no biases anywhere, no absolute position embedding.
    "global, no qkv bias": dict(use_rel_pos=True, qkv_bias=False, use_abs_pos=False, window_size=0),
    # Padded windows without a qkv bias: padded tokens enter as zeros.
    "padded windows, no qkv bias": dict(use_rel_pos=True, qkv_bias=False, window_size=6, global_attn_indexes=(0,)),
}


@pytest.mark.parametrize("variant", list(SMALL_VITS))
def test_small_vit_encoder_matches_official(official, variant):
    config = dict(
        img_size=256,
        patch_size=16,
        embed_dim=96,
        depth=3,
        num_heads=4,
        out_chans=64,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        **SMALL_VITS[variant],
    )
    torch.manual_seed(2)
    reference = randomise_constant_parameters(official.ImageEncoderViT(**config), seed=3).eval()
    ours = twin(reference, ImageEncoderViT(**config))
    image = astronaut_input(256, batch=2)
    with torch.inference_mode():
        expected = reference(image)
        got = ours(image)
    assert got.shape == (2, 64, 16, 16)
    assert relative_error(got, expected) <= RTOL


def test_banded_global_attention_matches_official(official, monkeypatch):
    """A small bias budget forces attention a few query rows at a time; same result."""
    config = dict(
        img_size=256, embed_dim=64, depth=2, num_heads=2, out_chans=32, use_rel_pos=True, window_size=14,
        global_attn_indexes=(1,),
    )
    torch.manual_seed(4)
    reference = randomise_constant_parameters(official.ImageEncoderViT(**config), seed=5).eval()
    ours = twin(reference, ImageEncoderViT(**config))
    image = astronaut_input(256)
    with torch.inference_mode():
        expected = reference(image)
        whole = ours(image)
        # 2 heads x 256 x 256 keys x 4 bytes = 512 KiB: 40 KiB allows 1 grid row per band.
        monkeypatch.setattr(image_encoder_module, "GLOBAL_BIAS_CHUNK_BYTES", 40 * 2**10)
        banded = ours(image)
    assert relative_error(banded, expected) <= RTOL
    assert relative_error(banded, whole) <= 1e-6


def test_image_encoder_rejects_wrong_input_size():
    encoder = ImageEncoderViT(img_size=64, embed_dim=32, depth=1, num_heads=2, out_chans=16)
    with pytest.raises(ImageError, match="3 x 64 x 64"):
        encoder(torch.zeros(1, 3, 48, 64))


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_layout_matches_official(name):
    """Every key and shape of the official model, nothing more (checkpoints load strictly)."""
    segment_anything = official_segment_anything()
    with torch.device("meta"):
        ours = build_model(get_spec(name))
        reference = segment_anything.sam_model_registry[name]()
    ours_layout = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    reference_layout = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert ours_layout == reference_layout
    # Which blocks attend globally is not in the state_dict: compare it too.
    def global_blocks(model):
        return [i for i, block in enumerate(model.image_encoder.blocks) if block.window_size == 0]

    assert global_blocks(ours) == global_blocks(reference) == list(VIT_CONFIGS[name][3])


# ----------------------------------------------------------------------------- prompt encoder

GEOMETRIES = {
    "sam 1024": ((64, 64), (1024, 1024)),
    # Non-square frames catch swapped x / y normalisation.
    "non-square": ((48, 64), (768, 1024)),
}


def prompt_inputs(input_size: tuple[int, int], batch: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    h, w = input_size
    coords = torch.rand(batch, 3, 2, generator=generator) * torch.tensor([w, h])
    labels = torch.tensor([[1, 0, -1], [1, 1, 0], [0, -1, -1], [1, 1, 1]])[:batch]
    corners = torch.rand(batch, 2, 2, generator=generator) * torch.tensor([w, h])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    return {"coords": coords, "labels": labels, "boxes": boxes}


PROMPT_KINDS = ["points", "boxes", "points+boxes", "masks", "points+masks", "points+boxes+masks"]


def prompt_kwargs(kind: str, inputs: dict, masks: torch.Tensor) -> dict:
    return {
        "points": (inputs["coords"], inputs["labels"]) if "points" in kind else None,
        "boxes": inputs["boxes"] if "boxes" in kind else None,
        "masks": masks if "masks" in kind else None,
    }


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_prompt_encoder_matches_official(official, geometry, kind):
    embedding_size, input_size = GEOMETRIES[geometry]
    args = dict(embed_dim=256, image_embedding_size=embedding_size, input_image_size=input_size, mask_in_chans=16)
    torch.manual_seed(6)
    reference = randomise_constant_parameters(official.PromptEncoder(**args), seed=7).eval()
    ours = twin(reference, PromptEncoder(**args))
    batch = 4
    mask_size = (4 * embedding_size[0], 4 * embedding_size[1])
    masks = torch.randn(batch, 1, *mask_size, generator=torch.Generator().manual_seed(8))
    kwargs = prompt_kwargs(kind, prompt_inputs(input_size, batch, seed=9), masks)
    with torch.inference_mode():
        sparse_ref, dense_ref = reference(**kwargs)
        sparse, dense = ours(**kwargs)
        pe_ref, pe = reference.get_dense_pe(), ours.get_dense_pe()
    expected_tokens = (3 + ("boxes" not in kind) if "points" in kind else 0) + 2 * ("boxes" in kind)
    assert sparse.shape == (batch, expected_tokens, 256) == sparse_ref.shape
    if expected_tokens:
        assert relative_error(sparse, sparse_ref) <= RTOL
    assert dense.shape == (batch, 256, *embedding_size)
    assert relative_error(dense, dense_ref) <= RTOL
    assert pe.shape == (1, 256, *embedding_size)
    assert relative_error(pe, pe_ref) <= RTOL


def test_dense_pe_follows_weights_and_dtype():
    """get_dense_pe (cached under inference mode) always reflects the current weights."""
    args = dict(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=4)
    torch.manual_seed(10)
    first, second = PromptEncoder(**args), PromptEncoder(**args)
    with torch.inference_mode():
        before = first.get_dense_pe()
        assert first.get_dense_pe() is before  # cached
        first.load_state_dict(second.state_dict())
        after_load = first.get_dense_pe()
        assert not torch.allclose(before, after_load)
        torch.testing.assert_close(after_load, second.get_dense_pe())
        first.pe_layer.positional_encoding_gaussian_matrix.mul_(2)
        assert not torch.allclose(after_load, first.get_dense_pe())
        first.double()
        assert first.get_dense_pe().dtype == torch.float64
    # Outside inference mode nothing is cached: a fresh tensor every call.
    assert first.get_dense_pe() is not first.get_dense_pe()
    torch.testing.assert_close(first.get_dense_pe(), first.pe_layer((8, 8))[None])


def test_prompt_encoder_rejects_mismatched_prompts():
    encoder = PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=4)
    with pytest.raises(PromptError, match="labels"):
        encoder((torch.zeros(2, 3, 2), torch.ones(2, 2)), None, None)
    with pytest.raises(PromptError, match="box"):
        encoder((torch.zeros(2, 3, 2), torch.ones(2, 3)), torch.zeros(3, 4), None)


# ----------------------------------------------------------------------------- transformer and mask decoder


def decoder_pair(official, seed: int) -> tuple[nn.Module, nn.Module]:
    """Official and our mask decoder with the checkpoints' configuration and equal weights."""
    torch.manual_seed(seed)
    reference = official.MaskDecoder(
        num_multimask_outputs=3,
        transformer=official.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    randomise_constant_parameters(reference, seed=seed + 1).eval()
    ours = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return reference, twin(reference, ours)


@pytest.fixture(scope="module")
def decoders(official):
    return decoder_pair(official, seed=11)


@pytest.fixture(scope="module")
def prompt_encoders(official):
    args = dict(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    torch.manual_seed(13)
    reference = randomise_constant_parameters(official.PromptEncoder(**args), seed=14).eval()
    return reference, twin(reference, PromptEncoder(**args))


def image_embedding(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 256, 64, 64, generator=torch.Generator().manual_seed(15))


@pytest.mark.parametrize(
    "batch, kind, multimask",
    [
        (1, "points", True),
        (1, "points", False),
        (3, "points", True),
        (3, "boxes", False),
        (3, "points+boxes+masks", True),
        (3, "points+boxes+masks", False),
    ],
)
def test_prompt_to_mask_pipeline_matches_official(decoders, prompt_encoders, batch, kind, multimask):
    """Prompt encoder + mask decoder, ours end to end against the official pair.

    Without a mask input our dense embedding is a broadcast view, which our
    decoder keeps at batch 1 up to the first image-to-token attention.
    """
    decoder_ref, decoder = decoders
    encoder_ref, encoder = prompt_encoders
    masks = torch.randn(batch, 1, 256, 256, generator=torch.Generator().manual_seed(16))
    kwargs = prompt_kwargs(kind, prompt_inputs((1024, 1024), batch, seed=17), masks)
    with torch.inference_mode():
        image = image_embedding()
        masks_ref, iou_ref = decoder_ref(image, encoder_ref.get_dense_pe(), *encoder_ref(**kwargs), multimask)
        got_masks, got_iou = decoder(image, encoder.get_dense_pe(), *encoder(**kwargs), multimask)
    outputs = 3 if multimask else 1
    assert got_masks.shape == (batch, outputs, 256, 256)
    assert got_iou.shape == (batch, outputs)
    assert relative_error(got_masks, masks_ref) <= RTOL
    assert relative_error(got_iou, iou_ref) <= RTOL


def test_mask_decoder_takes_official_embeddings(decoders, prompt_encoders):
    """Our decoder on the official prompt encoder's (contiguous, repeated) tensors."""
    decoder_ref, decoder = decoders
    encoder_ref, _ = prompt_encoders
    inputs = prompt_inputs((1024, 1024), 3, seed=19)
    with torch.inference_mode():
        sparse, dense = encoder_ref((inputs["coords"], inputs["labels"]), None, None)
        args = (image_embedding(), encoder_ref.get_dense_pe(), sparse, dense.contiguous(), True)
        masks_ref, iou_ref = decoder_ref(*args)
        got_masks, got_iou = decoder(*args)
    assert relative_error(got_masks, masks_ref) <= RTOL
    assert relative_error(got_iou, iou_ref) <= RTOL


def test_mask_decoder_with_one_embedding_per_prompt(decoders, prompt_encoders):
    """``B`` image embeddings for ``B`` prompts decode as each prompt on its own image."""
    reference, ours = decoders
    _, prompt_encoder = prompt_encoders
    embeddings = image_embedding(batch=2)
    with torch.inference_mode():
        sparse, dense = prompt_encoder(None, prompt_inputs((1024, 1024), 2, seed=18)["boxes"], None)
        pe = prompt_encoder.get_dense_pe()
        got_masks, got_iou = ours(embeddings, pe, sparse, dense, True)
        for i in range(2):
            masks_ref, iou_ref = reference(embeddings[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], True)
            assert relative_error(got_masks[i : i + 1], masks_ref) <= RTOL
            assert relative_error(got_iou[i : i + 1], iou_ref) <= RTOL
        with pytest.raises(PromptError, match="image embeddings"):
            ours(image_embedding(batch=2), pe, sparse[:1].expand(3, -1, -1), dense[:1].expand(3, -1, -1, -1), True)


def test_two_way_transformer_matches_official(official):
    torch.manual_seed(19)
    reference = official.TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=128, num_heads=4)
    randomise_constant_parameters(reference, seed=20).eval()
    ours = twin(reference, TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=128, num_heads=4))
    generator = torch.Generator().manual_seed(21)
    image = torch.randn(2, 64, 16, 12, generator=generator)
    pe = torch.randn(2, 64, 16, 12, generator=generator)
    tokens = torch.randn(2, 5, 64, generator=generator)
    with torch.inference_mode():
        queries_ref, keys_ref = reference(image, pe, tokens)
        queries, keys = ours(image, pe, tokens)
        # One image and its encoding shared by both prompts: the same as repeating them.
        shared_ref = reference(image[:1].expand(2, -1, -1, -1), pe[:1].expand(2, -1, -1, -1), tokens)
        shared = ours(image[:1], pe[:1], tokens)
    assert queries.shape == (2, 5, 64) and keys.shape == (2, 16 * 12, 64)
    assert relative_error(queries, queries_ref) <= RTOL
    assert relative_error(keys, keys_ref) <= RTOL
    assert relative_error(shared[0], shared_ref[0]) <= RTOL
    assert relative_error(shared[1], shared_ref[1]) <= RTOL
