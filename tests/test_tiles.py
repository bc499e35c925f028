"""Tiles of large planes: the grid, the stitching of tile results into one label image, resume."""

import numpy as np
import pytest
from skimage.draw import disk

from napari_sam.automatic import tiled
from napari_sam.automatic.tiled import Stitcher, segment_tiled
from napari_sam.errors import Cancelled, SamkitError
from napari_sam.evaluation import match_instances
from napari_sam.registry import get_spec
from napari_sam.tiles import TileGrid, check_tiling, resolve_tiling


def test_cores_partition_the_plane_and_windows_add_the_halo():
    grid = TileGrid((1000, 1500), tile=400, halo=50)
    assert (grid.rows, grid.cols, len(grid)) == (3, 4, 12)
    cover = np.zeros((1000, 1500), np.int32)
    for tile in grid:
        x0, y0, x1, y1 = tile.core
        cover[y0:y1, x0:x1] += 1
        wx0, wy0, wx1, wy1 = tile.window
        assert (wx0, wy0) == (max(0, x0 - 50), max(0, y0 - 50))
        assert (wx1, wy1) == (min(1500, x1 + 50), min(1000, y1 + 50))
        assert x1 - x0 <= 400 and y1 - y0 <= 400
    assert (cover == 1).all()  # every pixel in exactly one core
    assert not grid.single and TileGrid((500, 500), 400, 50).single


def test_a_prompt_goes_to_the_tile_with_the_most_margin_or_to_the_coarse_view():
    grid = TileGrid((1000, 1000), tile=500, halo=100)
    assert grid.tile_for([470, 100, 530, 160]).index in (0, 1)  # across the seam: inside both windows
    near_right = grid.tile_for([560, 100, 590, 160])
    assert near_right.index == 1  # deeper inside tile 1's window than tile 0's
    assert grid.tile_for([0, 0, 20, 20]).index == 0  # the plane's own edge cuts nothing
    assert grid.tile_for([100, 100, 900, 900]) is None  # no window holds it: the coarse view


def test_tiling_settings_are_checked_with_what_to_do():
    assert resolve_tiling(get_spec("lite_medsam")) == (768, 64)
    assert resolve_tiling(get_spec("vit_b")) == (896, 64)  # a 1,024 px window: SAM's input
    assert resolve_tiling(get_spec("vit_b"), tile=512, halo=32) == (512, 32)
    with pytest.raises(SamkitError, match="at least 64"):
        check_tiling(tile=10)
    with pytest.raises(SamkitError, match="less than half the tile"):
        check_tiling(tile=128, halo=64)
    with pytest.raises(SamkitError, match="tile must be between"):
        check_tiling(tile=-5)


# ----------------------------------------------------------------------- stitching


def _scene(shape=(600, 700), seed=3):
    """Discs of 4-22 px radius, several on seams and corners, and two large blobs (wider than 2 x halo)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.int32)
    centres = [(200, 250), (200, 251 + 30), (250, 200), (400, 500), (199, 499)]  # on the seams at 200/250/500
    centres += [tuple(c) for c in rng.integers(25, np.array(shape) - 25, size=(40, 2))]
    k = 0
    for cy, cx in centres:
        rr, cc = disk((cy, cx), rng.integers(4, 22), shape=shape)
        if (truth[rr, cc] == 0).all():
            k += 1
            truth[rr, cc] = k
    for (cy, cx) in ((300, 240), (120, 470)):  # large objects across seams
        rr, cc = disk((cy, cx), 70, shape=shape)
        free = truth[rr, cc] == 0
        k += 1
        truth[rr[free], cc[free]] = k
    return truth


def _perfect_tiles(truth):
    """A perfect model: the objects seen in a tile's window (cut at its edge), numbered in order."""
    from skimage.measure import label

    def segment(source, tile, *args, **kwargs):
        x0, y0, x1, y1 = tile.window
        part = truth[y0:y1, x0:x1]
        out = np.zeros(part.shape, np.uint32)
        for new, old in enumerate(np.unique(part[part > 0]), start=1):
            pieces = label(part == old)  # an object cut in two by the window edge is two objects
            out[pieces > 0] = new
        return out

    return segment


@pytest.mark.parametrize("tile, halo", [(200, 30), (250, 40), (128, 24)])
def test_objects_across_seams_and_corners_come_out_whole_and_once(monkeypatch, tile, halo):
    truth = _scene()
    monkeypatch.setattr(tiled, "segment_tile", _perfect_tiles(truth))
    result = segment_tiled(truth.astype(np.uint8), _model(), tile=tile, halo=halo)
    labels = result.labels
    matching = match_instances(truth, labels, iou_threshold=0.5)
    assert matching.f1 == 1.0, (matching.tp, matching.fp, matching.fn)
    # no object split (each true object is one label) nor merged, and no seam lines: exact pixels
    for k in np.unique(truth[truth > 0]):
        found = np.unique(labels[truth == k])
        assert found.size == 1 and found[0] > 0, (k, found)
    assert ((labels > 0) == (truth > 0)).all()
    assert result.objects == len(np.unique(truth)) - 1


def test_an_object_seen_from_two_tiles_is_painted_once():
    """Its centre moved across the seam between two tiles' masks: the second is a duplicate."""
    grid = TileGrid((100, 200), tile=100, halo=20)
    out = np.zeros((100, 200), np.uint32)
    stitcher = Stitcher(out, grid)
    left, right = grid[0], grid[1]
    first = np.zeros((100, 120), np.uint32)
    first[40:60, 90:109] = 1  # centre x 99.0: tile 0 owns it
    assert stitcher.add(left, first) == 1
    second = np.zeros((100, 140), np.uint32)
    second[40:60, 12:32] = 1  # window starts at x 80: image x 92-111, centre 101.5 -> tile 1 owns it too
    assert stitcher.add(right, second) == 0
    assert np.unique(out).tolist() == [0, 1]


# ----------------------------------------------------------------------- resume and cancel


class _Spec:
    zooms_prompts = True
    name = "fake"
    image_size = 256
    bfloat16_checked = True
    automatic_strategy = "boxes"
    supports_points = False
    sha256 = ""


def _model():
    from types import SimpleNamespace

    import torch

    encoder = torch.nn.Linear(1, 1)
    return SimpleNamespace(spec=_Spec(), image_encoder=encoder)


def test_a_cancelled_run_resumes_with_the_tiles_it_finished(monkeypatch, tmp_path):
    truth = _scene()
    perfect = _perfect_tiles(truth)
    calls = []

    def counting(source, tile, *args, **kwargs):
        calls.append(tile.index)
        return perfect(source, tile)

    monkeypatch.setattr(tiled, "segment_tile", counting)
    image, model = truth.astype(np.uint8), _model()
    whole = segment_tiled(image, model, tile=200, halo=30).labels
    calls.clear()
    with pytest.raises(Cancelled):
        segment_tiled(image, model, tile=200, halo=30, parts=tmp_path / "parts", cancel=lambda: len(calls) >= 5)
    assert calls == [0, 1, 2, 3, 4]
    calls.clear()
    again = segment_tiled(image, model, tile=200, halo=30, parts=tmp_path / "parts")
    assert calls == list(range(5, 12)) and again.reused == 5 and again.segmented == 7
    np.testing.assert_array_equal(again.labels, whole)
    # other settings, or other weights: the parts are not reused
    for other, amg in ((model, {"max_windows": 10}), (_model(), None)):
        calls.clear()
        segment_tiled(image, other, tile=200, halo=30, parts=tmp_path / "parts", amg=amg)
        assert calls == list(range(12))


def test_an_object_outlined_differently_by_two_tiles_is_not_split_between_two_labels():
    """Tile 1 sees the nucleus larger than tile 0 did: most of its pixels are new, but it holds all
    of tile 0's object, so it is that object (before, its new pixels became a second label)."""
    grid = TileGrid((100, 200), tile=100, halo=30)
    out = np.zeros((100, 200), np.uint32)
    stitcher = Stitcher(out, grid)
    first = np.zeros((100, 130), np.uint32)
    rr, cc = disk((50, 98), 10, shape=first.shape)
    first[rr, cc] = 1  # centre x 98: tile 0's
    stitcher.add(grid[0], first)
    second = np.zeros((100, 130), np.uint32)
    rr, cc = disk((50, 102 - 70), 16, shape=second.shape)  # tile 1's window starts at x 70
    second[rr, cc] = 1  # centre x 102: tile 1's, and 2.6 times larger
    assert stitcher.add(grid[1], second) == 0
    assert np.unique(out).tolist() == [0, 1]
