"""The embedding store: keys, zarr round trip, signature checks, resume, damaged entries, lazy inputs, CLI.

Most tests give LiteMedSAM a small stand-in image encoder (average pooling and a
1x1 convolution to 256 x 64 x 64, fixed seeded weights) that counts its calls:
the store does not depend on what the encoder computes, and the real one takes
seconds per call on a shared CPU. One test runs the real encoder end to end.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_sam import load_model
from napari_sam.cli import main
from napari_sam.embed import compute_embeddings, embed_one
from napari_sam.embedding import (
    EmbeddingCache,
    EmbeddingKey,
    image_signature,
    lazy_signature,
    model_identity,
    plane_view,
)
from napari_sam.errors import Cancelled, StoreError, StoreMismatchError
from napari_sam.inference import embed_image
from napari_sam.preprocess import as_rgb
from napari_sam.store import EmbeddingStore, is_store, store_in_folder


class CountingEncoder(nn.Module):
    """``1 x 3 x 256 x 256`` -> ``1 x 256 x 64 x 64``: pooling and a 1x1 convolution; counts calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.pool = nn.AvgPool2d(4)
        self.proj = nn.Conv2d(3, 256, 1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=generator))
            self.proj.bias.copy_(torch.randn(self.proj.bias.shape, generator=generator))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.proj(self.pool(x))


@pytest.fixture
def fast_model(lite_medsam):
    """LiteMedSAM's prompt encoder and decoder with a counting stand-in image encoder (a copy per test)."""
    from napari_sam.models.sam import SamModel

    return SamModel(CountingEncoder(), lite_medsam.prompt_encoder, lite_medsam.mask_decoder, lite_medsam.spec).eval()


def stack(n: int = 4, shape=(96, 128), seed: int = 0) -> np.ndarray:
    """A uint16 stack of blobs that differ from plane to plane."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    planes = []
    for _ in range(n):
        plane = rng.normal(200, 20, shape)
        for _ in range(6):
            cy, cx = rng.uniform(10, np.array(shape) - 10)
            plane += 1500 * (np.hypot(yy - cy, xx - cx) < rng.uniform(4, 12))
        planes.append(plane)
    return np.clip(np.stack(planes), 0, 65535).astype(np.uint16)


def test_round_trip_is_bit_identical_with_the_real_encoder(lite_medsam, tmp_path):
    from skimage import data

    image = data.coins()
    store = EmbeddingStore(tmp_path / "coins.zarr")
    (computed,) = compute_embeddings(lite_medsam, image, store=store, precision="float32")
    reopened = EmbeddingStore(tmp_path / "coins.zarr")  # a new object: nothing in memory
    loaded = reopened.get(computed.key)
    assert reopened.reads == 1 and loaded is not computed
    assert loaded.features.dtype == torch.float32 and loaded.features.shape == (1, 256, 64, 64)
    assert loaded.features.numpy().tobytes() == computed.features.numpy().tobytes()
    assert (loaded.original_size, loaded.input_size, loaded.image_size, loaded.model_name) == (
        (303, 384), computed.input_size, 256, "lite_medsam")
    assert loaded.key == computed.key
    assert computed.key.model == f"lite_medsam@sha256-{lite_medsam.spec.sha256[:16]}"
    assert computed.key.image == image_signature(image) and computed.key.precision == "float32"


def test_planes_and_windows_are_separate_entries_with_their_geometry(fast_model, tmp_path):
    volume = stack(3)
    windows = [(0, 0, 64, 48), (32, 16, 128, 96), (0, 0, 128, 96)]  # the last is the whole plane
    store = EmbeddingStore(tmp_path / "s.zarr")
    got = list(compute_embeddings(fast_model, volume, planes=[(0,), (2,)], windows=windows, store=store))
    assert [e.key.plane for e in got] == [(0,)] * 3 + [(2,)] * 3
    assert [e.key.window for e in got[:3]] == [(0, 0, 64, 48), (32, 16, 128, 96), None]
    assert [e.original_size for e in got[:3]] == [(48, 64), (80, 96), (96, 128)]
    assert sorted(store.entry_names()) == sorted(e.key.entry_name for e in got)
    assert fast_model.image_encoder.calls == 6
    fresh = EmbeddingStore(tmp_path / "s.zarr")
    again = list(compute_embeddings(fast_model, volume, planes=[(0,), (2,)], windows=windows, store=fresh))
    assert fast_model.image_encoder.calls == 6 and fresh.reads == 6
    for a, b in zip(got, again):
        assert a.key == b.key and torch.equal(a.features, b.features) and a.original_size == b.original_size
    # A window of a plane is that window cut out of the plane's RGB and embedded.
    rgb = as_rgb(volume[2])
    direct = embed_image(fast_model, np.ascontiguousarray(rgb[16:96, 32:128]))
    assert torch.equal(direct.features, again[4].features)


def test_store_of_another_image_model_or_precision_is_refused(fast_model, lite_medsam, tmp_path):
    from napari_sam.models.sam import SamModel

    image = stack(1)[0]
    path = tmp_path / "one.zarr"
    list(compute_embeddings(fast_model, image, store=EmbeddingStore(path), precision="float32"))

    with pytest.raises(StoreMismatchError) as other_image:
        compute_embeddings(fast_model, image[::-1].copy(), store=EmbeddingStore(path), precision="float32")
    message = str(other_image.value)
    assert "another image" in message and "new folder" in message and "overwrite" in message
    assert str(path) in message

    other = SamModel(CountingEncoder(seed=1), lite_medsam.prompt_encoder, lite_medsam.mask_decoder, lite_medsam.spec)
    with pytest.raises(StoreMismatchError, match="another model"):
        compute_embeddings(other, image, store=EmbeddingStore(path), precision="float32")

    with pytest.raises(StoreMismatchError, match="encoder precision") as other_precision:
        compute_embeddings(fast_model, image, store=EmbeddingStore(path), precision="bfloat16")
    assert "'float32'" in str(other_precision.value) and "'bfloat16'" in str(other_precision.value)
    assert fast_model.image_encoder.calls == 1  # refused before any work

    # overwrite starts afresh for the new image; the old entry is gone
    store = EmbeddingStore(path, overwrite=True)
    (embedding,) = compute_embeddings(fast_model, image[::-1].copy(), store=store, precision="float32")
    assert store.attributes["image"] == image_signature(image[::-1].copy()) and len(store) == 1

    # a folder with other files is not taken over
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an embedding store"):
        EmbeddingStore.open(tmp_path / "notes", embedding.key)


def test_resume_after_cancel_computes_only_the_missing_planes_and_windows(fast_model, tmp_path):
    volume = stack(5)
    windows = [(0, 0, 64, 96), (64, 0, 128, 96)]
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 6:
            stop.set()

    store = EmbeddingStore(tmp_path / "s.zarr")
    with pytest.raises(Cancelled):
        for _ in compute_embeddings(fast_model, volume, windows=windows, store=store, progress=progress, cancel=stop):
            pass
    assert fast_model.image_encoder.calls == 6 and len(store) == 6 and seen[-1] == (6, 10)

    again = EmbeddingStore(tmp_path / "s.zarr")
    got = list(compute_embeddings(fast_model, volume, windows=windows, store=again, cancel=lambda: False))
    assert len(got) == 10 and fast_model.image_encoder.calls == 10  # only the 4 missing ones
    assert again.reads == 6 and again.writes == 4 and len(again) == 10


def _entry(store_path: Path, name: str) -> Path:
    return store_path / name


def test_half_written_or_damaged_entries_are_computed_again(fast_model, tmp_path):
    volume = stack(3)
    path = tmp_path / "s.zarr"
    first = list(compute_embeddings(fast_model, volume, store=EmbeddingStore(path)))
    assert fast_model.image_encoder.calls == 3
    names = [e.key.entry_name for e in first]

    # plane 0: killed between the bytes and the 'complete' mark
    meta = _entry(path, names[0]) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    # plane 1: a chunk file whose bytes changed after it was marked complete
    chunk = next(p for p in _entry(path, names[1]).rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[100:108] = b"\x00" * 8 if raw[100:108] != b"\x00" * 8 else b"\x01" * 8
    chunk.write_bytes(bytes(raw))
    # plane 2: metadata cut off mid-write
    meta2 = _entry(path, names[2]) / "zarr.json"
    meta2.write_text(meta2.read_text()[:40])

    store = EmbeddingStore(path)
    for e in first:
        assert store.get(e.key) is None  # none of them reads as valid
    again = list(compute_embeddings(fast_model, volume, store=store))
    assert fast_model.image_encoder.calls == 6
    for a, b in zip(first, again):
        assert torch.equal(a.features, b.features)
    assert len(EmbeddingStore(path)) == 3


def test_dask_and_zarr_inputs_give_the_numpy_embeddings(fast_model, tmp_path):
    import dask.array as da
    import zarr

    volume = stack(4)
    numpy_embeddings = list(compute_embeddings(fast_model, volume))
    lazy = da.from_array(volume, chunks=(1, 48, 64))
    on_disk = zarr.create_array(str(tmp_path / "image.zarr"), shape=volume.shape, dtype=volume.dtype,
                                chunks=(1, 48, 64))
    on_disk[...] = volume
    for source in (lazy, on_disk):
        got = list(compute_embeddings(fast_model, source))
        assert len(got) == 4
        for a, b in zip(numpy_embeddings, got):
            assert torch.equal(a.features, b.features) and a.key.plane == b.key.plane
        assert got[0].key.image.startswith("lazy-")
    # The lazy signature is stable and sees an edit in a sampled chunk (the first and last are sampled).
    assert lazy_signature(on_disk) == lazy_signature(zarr.open_array(str(tmp_path / "image.zarr"), mode="r"))
    before = lazy_signature(on_disk)
    on_disk[0, 0, 0] = 7
    assert lazy_signature(on_disk) != before


class CountingArray:
    """An array-like that counts the elements read through it."""

    def __init__(self, data: np.ndarray, chunks) -> None:
        self.data, self.chunks, self.read = data, chunks, 0
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, index):
        part = self.data[index]
        self.read += np.size(part)
        return part


def test_lazy_signature_reads_a_few_chunks_only():
    data = np.arange(64 * 256 * 256, dtype=np.uint16).reshape(64, 256, 256)
    array = CountingArray(data, chunks=(1, 128, 128))
    signature = image_signature(array)
    assert signature.startswith("lazy-") and array.read == 8 * 128 * 128  # 8 of 256 chunks
    assert image_signature(CountingArray(data, (1, 128, 128))) == signature


def test_model_identity_follows_the_weights(fast_model, lite_medsam):
    assert model_identity(lite_medsam) == f"lite_medsam@sha256-{lite_medsam.spec.sha256[:16]}"
    before = model_identity(fast_model)
    assert before.startswith("lite_medsam@weights-") and model_identity(fast_model) == before
    with torch.no_grad():
        fast_model.image_encoder.proj.weight.mul_(1.5)  # as an optimizer step: in place
    after = model_identity(fast_model)
    assert after != before and after.startswith("lite_medsam@weights-")


def test_model_identity_of_a_checkpoint_file(lite_medsam, tmp_path):
    path = tmp_path / "tuned.pth"
    torch.save(lite_medsam.state_dict(), path)
    model = load_model(path)
    identity = model_identity(model)
    assert identity.startswith("tuned@file-")
    path.touch()  # same bytes, but the file was replaced: another identity after reloading
    import os

    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert model_identity(load_model(path)) != identity


def test_keys_views_and_memory_cache(fast_model):
    image = stack(1)[0]
    cache = EmbeddingCache()
    (first,) = compute_embeddings(fast_model, image, cache=cache)
    (second,) = compute_embeddings(fast_model, image, cache=cache)
    assert second is first and fast_model.image_encoder.calls == 1
    assert first.key == EmbeddingKey.create(image_signature(image), fast_model, None)
    assert plane_view((0, 2), 3, 0, [0, 1, 2]) == "axes=0,2;channel_axis=0;channels=0,1,2"
    assert plane_view((1, 2), 3) == "" and plane_view() == ""
    assert first.key.at(plane=(3,), window=(0, 0, 8, 8)).entry_name == "plane-3_window-0-0-8-8"
    assert EmbeddingKey("i", (), None, "m", "float32", "0").plane is None


def test_store_in_folder_keeps_one_store_per_image_and_model(fast_model, tmp_path):
    image = stack(1)[0]
    key = EmbeddingKey.create(image_signature(image), fast_model, "float32")
    where = store_in_folder(tmp_path, key, "my image")
    assert where.parent == tmp_path and where.name.startswith("my_image-lite_medsam-float32-")
    EmbeddingStore.open(where, key)
    assert is_store(where) and store_in_folder(where, key) == where  # a store is used as it is


def test_refine_reads_its_windows_from_the_store(fast_model, tmp_path):
    from napari_sam.automatic import segment_boxes

    image = stack(1, shape=(256, 320))[0]
    boxes = np.array([[10, 10, 40, 40], [200, 150, 240, 200], [100, 60, 130, 90]], float)
    path = tmp_path / "s.zarr"
    first = segment_boxes(image, boxes, fast_model, store=EmbeddingStore(path))
    calls = fast_model.image_encoder.calls
    assert calls >= 1 and len(EmbeddingStore(path)) == calls
    again = segment_boxes(image, boxes, fast_model, store=EmbeddingStore(path))
    assert fast_model.image_encoder.calls == calls and np.array_equal(first, again)


# --------------------------------------------------------------------------- command line


@pytest.fixture
def cli_model(fast_model, monkeypatch):
    """``samkit`` loads the counting model whatever --model says."""
    import napari_sam.loading

    monkeypatch.setattr(napari_sam.loading, "load_model", lambda *args, **kwargs: fast_model)
    return fast_model


def test_cli_embed_then_segment_reuses_the_store(cli_model, tmp_path, capsys):
    import tifffile

    image = stack(3)
    tifffile.imwrite(tmp_path / "stack.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "plane.tif", image[1])
    (tmp_path / "points.csv").write_text("x,y\n40,30\n")
    store = tmp_path / "plane.zarr"

    assert main(["embed", str(tmp_path / "stack.tif"), "--store", str(tmp_path / "stack.zarr"), "--planes", "0,2"]) == 0
    assert cli_model.image_encoder.calls == 2 and len(EmbeddingStore(tmp_path / "stack.zarr")) == 2
    assert "2 embedding(s)" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "stack.tif"), "--store", str(tmp_path / "stack.zarr")]) == 0
    assert cli_model.image_encoder.calls == 3  # plane 1 only
    assert "1 computed, 2 were already there" in capsys.readouterr().err

    assert main(["embed", str(tmp_path / "plane.tif"), "--store", str(store), "--quiet"]) == 0
    assert cli_model.image_encoder.calls == 4
    assert main(["segment", str(tmp_path / "plane.tif"), "-o", str(tmp_path / "a.tif"), "--points",
                 str(tmp_path / "points.csv"), "--store", str(store)]) == 0
    assert cli_model.image_encoder.calls == 4  # the stored embedding, no encoder
    assert "1 embedding(s) read" in capsys.readouterr().err

    # zoomed box windows: computed and stored by the first run, read by the second
    (tmp_path / "boxes.csv").write_text("x0,y0,x1,y1\n10,10,40,40\n80,50,120,90\n")
    args = ["segment", str(tmp_path / "plane.tif"), "-o", str(tmp_path / "b.tif"), "--boxes",
            str(tmp_path / "boxes.csv"), "--store", str(store), "--quiet"]
    assert main(args) == 0
    calls = cli_model.image_encoder.calls
    first = tifffile.imread(tmp_path / "b.tif")
    assert main(args) == 0
    assert cli_model.image_encoder.calls == calls and np.array_equal(tifffile.imread(tmp_path / "b.tif"), first)


def test_cli_refuses_the_store_of_another_image(cli_model, tmp_path, capsys):
    import tifffile

    image = stack(2)
    tifffile.imwrite(tmp_path / "a.tif", image[0])
    tifffile.imwrite(tmp_path / "b.tif", image[1])
    assert main(["embed", str(tmp_path / "a.tif"), "--store", str(tmp_path / "s"), "--quiet"]) == 0
    code = main(["segment", str(tmp_path / "b.tif"), "-o", str(tmp_path / "l.tif"), "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "another image" in err and "new folder" in err
    assert main(["embed", str(tmp_path / "b.tif"), "--store", str(tmp_path / "s"), "--overwrite", "--quiet"]) == 0
    assert EmbeddingStore(tmp_path / "s").attributes["image"] == image_signature(image[1])


def test_embed_one_is_the_single_embedding(fast_model):
    image = stack(2)
    embedding = embed_one(fast_model, image, planes=[(1,)])
    assert embedding.key.plane == (1,) and fast_model.image_encoder.calls == 1
