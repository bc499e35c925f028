"""The pure functions of segment-everything against Meta's ``utils.amg`` and brute force.

Also: ``masks_to_labels`` (overlap rule) and ``edge_map`` on generated masks.
"""

from __future__ import annotations

import sys
import types
from collections import deque

import numpy as np
import pytest
import torch
from reference import _batched_nms as reference_batched_nms
from reference import official_segment_anything
from scipy import ndimage
from skimage import measure

from napari_sam.automatic import amg, edge_map, masks_to_labels
from napari_sam.errors import SamkitError


@pytest.fixture(scope="module")
def official():
    official_segment_anything()
    from segment_anything.utils import amg as official_amg

    return official_amg


def cv2_stand_in() -> types.ModuleType:
    """A ``cv2`` with ``connectedComponentsWithStats(mask, 8)`` on scikit-image.

    OpenCV's semantics as the official ``remove_small_regions`` uses them: label 0 is
    the zero pixels (its row in ``stats`` exists even when there are none), labels
    1..n-1 the 8-connected components of the non-zero pixels, ``stats[:, -1]`` the
    areas. Only the area column is filled.
    """
    module = types.ModuleType("cv2")

    def connectedComponentsWithStats(image, connectivity=8):  # noqa: N802 - OpenCV's name
        assert connectivity == 8
        labels, n = measure.label(np.asarray(image) != 0, connectivity=2, background=0, return_num=True)
        stats = np.zeros((n + 1, 5), dtype=np.int32)
        stats[:, -1] = np.bincount(labels.ravel(), minlength=n + 1)
        return n + 1, labels.astype(np.int32), stats, np.zeros((n + 1, 2))

    module.connectedComponentsWithStats = connectedComponentsWithStats
    return module


# ------------------------------------------------------------------ grids, crops


@pytest.mark.parametrize("n", [1, 2, 5, 16, 32])
def test_point_grid_matches_official(official, n):
    ours = amg.build_point_grid(n)
    assert ours.shape == (n * n, 2)
    np.testing.assert_array_equal(ours, official.build_point_grid(n))


@pytest.mark.parametrize("n_per_side,n_layers,scale", [(32, 0, 1), (32, 2, 2), (16, 3, 2), (10, 1, 3)])
def test_layer_point_grids_match_official(official, n_per_side, n_layers, scale):
    ours = amg.build_all_layer_point_grids(n_per_side, n_layers, scale)
    theirs = official.build_all_layer_point_grids(n_per_side, n_layers, scale)
    assert len(ours) == len(theirs) == n_layers + 1
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(300, 380), (1024, 768), (97, 1501), (512, 512)])
@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("overlap", [512 / 1500, 0.0, 0.5])
def test_crop_boxes_match_official(official, size, n_layers, overlap):
    boxes, layers = amg.generate_crop_boxes(size, n_layers, overlap)
    their_boxes, their_layers = official.generate_crop_boxes(size, n_layers, overlap)
    assert boxes == their_boxes
    assert layers == their_layers
    assert sum(1 for layer in layers if layer == n_layers) == 4**n_layers


def test_batch_slices_cover_range():
    slices = list(amg.batch_slices(10, 4))
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    assert list(amg.batch_slices(0, 4)) == []


# ------------------------------------------------------------- mask statistics


def _smooth_logits(rng, batch, h, w, scale=6.0):
    coarse = torch.from_numpy(rng.standard_normal((batch, 1, 12, 12)).astype(np.float32))
    return scale * torch.nn.functional.interpolate(coarse, (h, w), mode="bilinear", align_corners=False)[:, 0]


@pytest.mark.parametrize("offset", [1.0, 0.5, 2.0])
def test_stability_score_matches_official_exactly(official, offset):
    rng = np.random.default_rng(0)
    logits = _smooth_logits(rng, 40, 150, 230)
    logits[3] = -10.0  # empty at both thresholds: 0 / 0
    logits[4] = 0.5  # empty above +offset, full below: 0
    ours = amg.calculate_stability_score(logits, 0.0, offset)
    theirs = official.calculate_stability_score(logits, 0.0, offset)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(ours[3]) and ours[4] == 0
    # Batch dimensions are kept: B x C x H x W -> B x C.
    stacked = amg.calculate_stability_score(logits.reshape(10, 4, 150, 230), 0.0, offset)
    torch.testing.assert_close(stacked.flatten(), ours, rtol=0, atol=0, equal_nan=True)


def _brute_force_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_mask_to_box_matches_official_and_brute_force(official):
    rng = np.random.default_rng(1)
    masks = _smooth_logits(rng, 30, 64, 90) > 5.0
    masks[0] = False
    masks[1] = False
    masks[1, 63, 89] = True  # a single corner pixel
    masks[2] = True
    ours = amg.batched_mask_to_box(masks)
    assert ours.dtype == torch.int64
    torch.testing.assert_close(ours, official.batched_mask_to_box(masks), rtol=0, atol=0)
    assert ours.tolist() == [_brute_force_box(m) for m in masks.numpy()]
    assert ours[0].tolist() == [0, 0, 0, 0] and ours[1].tolist() == [89, 63, 89, 63]
    # Any leading shape; a single 2D mask gives one box.
    grouped = amg.batched_mask_to_box(masks.reshape(5, 6, 64, 90))
    assert grouped.shape == (5, 6, 4)
    torch.testing.assert_close(grouped.reshape(-1, 4), ours, rtol=0, atol=0)
    assert amg.batched_mask_to_box(masks[5]).tolist() == ours[5].tolist()
    assert amg.batched_mask_to_box(torch.zeros(0, 8, 8, dtype=torch.bool)).shape == (0, 4)


def test_box_conversions_and_area(official):
    boxes = torch.tensor([[3, 4, 10, 20], [0, 0, 0, 0], [5, 5, 6, 9]])
    xywh = amg.box_xyxy_to_xywh(boxes)
    assert xywh.tolist() == [[3, 4, 7, 16], [0, 0, 0, 0], [5, 5, 1, 4]]
    assert boxes.tolist()[0] == [3, 4, 10, 20]  # input untouched
    for box, converted in zip(boxes, xywh):
        assert official.box_xyxy_to_xywh(box).tolist() == converted.tolist()
    assert amg.box_xyxy_to_xywh(boxes.numpy()).tolist() == xywh.tolist()
    assert amg.box_area(boxes).tolist() == [7 * 16, 0, 4]


# ------------------------------------------------------------------------- NMS


def _brute_force_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS written plainly: visit by (-score, index), keep if no kept box of the class overlaps."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        suppressed = False
        for j in kept:
            if idxs[i] != idxs[j]:
                continue
            a, b = boxes[i].astype(np.float64), boxes[j].astype(np.float64)
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


def _random_boxes(rng, n, extent=60):
    xy = rng.integers(0, extent, size=(n, 2))
    wh = rng.integers(1, extent // 2, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
def test_nms_matches_reference_and_brute_force(seed, threshold):
    rng = np.random.default_rng(seed)
    n = 150
    boxes = _random_boxes(rng, n)
    boxes[10] = boxes[11]  # exact duplicates
    # Few distinct scores: many ties, which must keep the input order.
    scores = rng.choice([0.2, 0.5, 0.5, 0.8, 0.9], size=n).astype(np.float32)
    idxs = rng.integers(0, 3, size=n) if seed % 2 else np.zeros(n, dtype=np.int64)
    idxs[10] = idxs[11]
    b, s, c = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs)
    ours = amg.batched_nms(b, s, c, threshold)
    assert ours.dtype == torch.int64
    assert ours.tolist() == reference_batched_nms(b, s, c, threshold).tolist()
    assert ours.tolist() == _brute_force_nms(boxes, scores, idxs, threshold)
    assert len(ours) < n  # something was suppressed


def test_nms_ties_keep_input_order_and_empty_input():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    assert amg.nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert amg.nms(boxes, torch.full((4,), 0.5), 0.5).tolist() == [0, 2]
    assert amg.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.7).tolist() == []
    # Zero-area boxes never suppress anything (IoU 0/0 is not above the threshold).
    assert amg.nms(torch.zeros(3, 4), torch.tensor([0.1, 0.2, 0.3]), 0.7).tolist() == [2, 1, 0]


# --------------------------------------------------------------- crop geometry


def test_crop_edge_and_uncrop_match_official(official):
    rng = np.random.default_rng(3)
    crop_box = [100, 50, 300, 250]
    orig_box = [0, 0, 300, 400]
    xy = rng.integers(0, 180, size=(200, 2))
    boxes = torch.from_numpy(np.concatenate([xy, xy + rng.integers(0, 40, size=(200, 2))], 1))
    ours = amg.is_box_near_crop_edge(boxes, crop_box, orig_box)
    theirs = official.is_box_near_crop_edge(boxes, crop_box, orig_box)
    assert ours.tolist() == theirs.tolist()
    assert 0 < int(ours.sum()) < len(ours)
    # The right edge (x = 300) is the image's: boxes there are not "near the crop edge".
    assert not amg.is_box_near_crop_edge(torch.tensor([[150, 90, 199, 150]]), crop_box, orig_box).item()
    assert amg.is_box_near_crop_edge(torch.tensor([[5, 90, 50, 150]]), crop_box, orig_box).item()

    torch.testing.assert_close(amg.uncrop_boxes_xyxy(boxes, crop_box), official.uncrop_boxes_xyxy(boxes, crop_box))
    points = torch.from_numpy(rng.random((20, 2)) * 100)
    torch.testing.assert_close(amg.uncrop_points(points, crop_box), official.uncrop_points(points, crop_box))
    masks = torch.from_numpy(rng.random((4, 200, 200)) > 0.5)
    ours_masks = amg.uncrop_masks(masks, crop_box, 400, 300)
    assert ours_masks.shape == (4, 400, 300)
    assert torch.equal(ours_masks, official.uncrop_masks(masks, crop_box, 400, 300))
    assert amg.uncrop_masks(masks, [0, 0, 200, 200], 200, 200) is masks


# ------------------------------------------------------- small-region removal


def _components_8(mask: np.ndarray) -> np.ndarray:
    """8-connected labels by breadth-first search, numbered in raster order of first pixel."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    h, w = mask.shape
    current = 0
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x]:
                continue
            current += 1
            labels[y, x] = current
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                            labels[ny, nx] = current
                            queue.append((ny, nx))
    return labels


def _brute_force_remove(mask: np.ndarray, area: float, mode: str) -> tuple[np.ndarray, bool]:
    holes = mode == "holes"
    labels = _components_8(~mask if holes else mask)
    sizes = {k: int((labels == k).sum()) for k in range(1, labels.max() + 1)}
    small = [k for k, s in sizes.items() if s < area]
    if not small:
        return mask, False
    if holes:
        return mask | np.isin(labels, small), True
    big = [k for k in sizes if k not in small]
    if not big:
        big = [max(sizes, key=lambda k: (sizes[k], -k))]
    return np.isin(labels, big), True


def _random_masks(rng, n, h=24, w=28):
    masks = []
    for i in range(n):
        density = [0.2, 0.45, 0.6, 0.8][i % 4]
        masks.append(rng.random((h, w)) < density)
    return np.stack(masks)


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 3, 8, 40])
def test_remove_small_regions_matches_brute_force(mode, area):
    rng = np.random.default_rng(area)
    masks = _random_masks(rng, 12)
    expected = [_brute_force_remove(m, area, mode) for m in masks]
    batch, changed = amg.remove_small_regions_batch(masks, area, mode)
    assert changed.tolist() == [c for _, c in expected]
    for k, (mask, was_changed) in enumerate(expected):
        np.testing.assert_array_equal(batch[k], mask)
        given = masks[k]
        single, single_changed = amg.remove_small_regions(given, area, mode)
        assert single_changed == was_changed
        np.testing.assert_array_equal(single, mask)
        if not was_changed:
            assert single is given


def test_remove_small_regions_rules():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:5, 2:5] = True  # 9 px
    mask[10:14, 10:14] = True  # 16 px
    mask[5, 5] = True  # touches the first square diagonally: same region (10 px)
    islands, changed = amg.remove_small_regions(mask, 12, "islands")
    assert changed and islands.sum() == 16 and not islands[3, 3]
    # All islands small: the largest is kept.
    only, changed = amg.remove_small_regions(mask, 100, "islands")
    assert changed and only.sum() == 16 and only[11, 11]
    ring = np.zeros((12, 12), dtype=bool)
    ring[2:9, 2:9] = True
    ring[4:7, 4:7] = False  # a 9 px hole
    filled, changed = amg.remove_small_regions(ring, 10, "holes")
    assert changed and filled[2:9, 2:9].all() and filled.sum() == 49
    kept, changed = amg.remove_small_regions(ring, 9, "holes")  # area 9 is not < 9
    assert not changed and kept is ring
    with pytest.raises(SamkitError, match="holes"):
        amg.remove_small_regions(ring, 9, "both")


def test_remove_small_regions_matches_official_with_cv2_stand_in(official, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", cv2_stand_in())
    rng = np.random.default_rng(7)
    for mask in _random_masks(rng, 16, 40, 50):
        for mode in ("holes", "islands"):
            theirs, their_changed = official.remove_small_regions(mask, 6, mode)
            ours, changed = amg.remove_small_regions(mask, 6, mode)
            assert changed == their_changed
            np.testing.assert_array_equal(ours, theirs)


# --------------------------------------------------------------------- records


def test_mask_records_filter_and_cat():
    records = amg.MaskRecords(a=torch.arange(5), b=np.arange(5) * 10)
    records.filter(torch.tensor([True, False, True, True, False]))
    assert records["a"].tolist() == [0, 2, 3] and records["b"].tolist() == [0, 20, 30]
    records.filter(torch.tensor([2, 0]))
    assert records["a"].tolist() == [3, 0] and records["b"].tolist() == [30, 0]
    records.cat(amg.MaskRecords(a=torch.tensor([7]), b=np.array([70])))
    assert len(records) == 3 and records["b"].tolist() == [30, 0, 70]
    joined = amg.MaskRecords.concat([records, amg.MaskRecords(), amg.MaskRecords(a=torch.tensor([9]), b=np.array([1]))])
    assert joined["a"].tolist() == [3, 0, 7, 9] and "b" in joined
    assert len(amg.MaskRecords()) == 0 and len(amg.MaskRecords().cat(joined)) == 4


# ---------------------------------------------------------------------- labels


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _record(mask, iou=0.9, stability=0.95):
    return {"segmentation": mask, "area": int(mask.sum()), "predicted_iou": iou, "stability_score": stability}


def test_masks_to_labels_smaller_masks_win():
    shape = (60, 80)
    cell = _disk(shape, (30, 40), 20)
    nucleus = _disk(shape, (30, 40), 6)
    other = _disk(shape, (30, 70), 8)  # overlaps the cell's right side
    records = [_record(nucleus, 0.8), _record(cell, 0.99), _record(other, 0.7)]
    labels = masks_to_labels(records)
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert (labels[nucleus] == 1).all()
    assert (labels[other] == 3).all()
    assert (labels[cell & ~nucleus & ~other] == 2).all()
    assert (labels[~(cell | nucleus | other)] == 0).all()
    # The same result whatever the record order (labels follow the records).
    reordered = masks_to_labels([records[2], records[1], records[0]])
    assert (reordered[nucleus] == 3).all() and (reordered[other] == 1).all()


def test_masks_to_labels_equal_area_quality_then_order():
    shape = (20, 20)
    a = np.zeros(shape, bool)
    a[2:10, 2:10] = True
    b = np.zeros(shape, bool)
    b[6:14, 6:14] = True  # same area, overlaps a
    labels = masks_to_labels([_record(a, 0.8), _record(b, 0.9)])
    assert labels[7, 7] == 2  # the better mask wins the overlap
    labels = masks_to_labels([_record(a, 0.9, 0.9), _record(b, 0.9, 0.9)])
    assert labels[7, 7] == 1  # full tie: the earlier record
    hidden = masks_to_labels([_record(a), _record(a.copy(), 0.5)])
    assert set(np.unique(hidden)) == {0, 1}  # the equal, worse duplicate is hidden


def test_masks_to_labels_empty_and_errors():
    assert masks_to_labels([], shape=(5, 6)).shape == (5, 6)
    with pytest.raises(SamkitError, match="shape"):
        masks_to_labels([])
    with pytest.raises(SamkitError):
        masks_to_labels([_record(np.ones((4, 4), bool))], shape=(5, 5))


# ----------------------------------------------------------------------- edges


def test_edge_map_follows_object_boundaries():
    shape = (120, 160)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    discs = ((60, 50, 25), (50, 115, 18))
    # Soft probability maps of two discs (sigmoid of a signed distance).
    maps = []
    for cy, cx, r in discs:
        distance = np.hypot(yy - cy, xx - cx) - r
        maps.append((1.0 / (1.0 + np.exp(distance / 1.5))).astype(np.float32))
    edges = edge_map(np.stack(maps))
    assert edges.dtype == np.float32 and edges.shape == shape
    assert edges.min() >= 0.0 and edges.max() == pytest.approx(1.0)
    strong = edges > 0.3
    near_strong = ndimage.binary_dilation(strong, np.ones((3, 3), bool))
    angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    for cy, cx, r in discs:  # every point of both circles has an edge pixel next to it
        ys = np.round(cy + r * np.sin(angles)).astype(int)
        xs = np.round(cx + r * np.cos(angles)).astype(int)
        assert near_strong[ys, xs].mean() > 0.95
    far = np.ones(shape, bool)
    for cy, cx, r in discs:
        far &= np.abs(np.hypot(yy - cy, xx - cx) - r) > 3
    assert not strong[far].any()  # nothing away from the boundaries
    # Thinning leaves a line about one pixel wide: count along a row through a disc.
    assert 2 <= strong[60, :100].sum() <= 4
    thick = edge_map(np.stack(maps), thin=False) > 0.3
    assert thick.sum() > 1.5 * strong.sum()
    raw = edge_map(np.stack(maps), normalize=False)
    assert 0.0 < raw.max() <= 0.5


def test_edge_map_empty_and_errors():
    assert not edge_map([], shape=(7, 9)).any()
    with pytest.raises(SamkitError, match="shape"):
        edge_map([])
    with pytest.raises(SamkitError, match="return_logits"):
        edge_map([{"segmentation": np.zeros((4, 4), bool)}])


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"area": 3}], "Record 0 has no 'segmentation'"),
        ([{"segmentation": np.zeros((2, 8, 8), bool)}], "each mask is one H x W plane"),
        ([{"segmentation": np.zeros((8, 8), bool)}, {"segmentation": np.zeros((10, 10), bool)}],
         "The masks have different shapes"),
    ],
)
def test_masks_to_labels_says_what_is_wrong_with_the_records(records, message):
    from napari_sam.errors import SamkitError

    with pytest.raises(SamkitError, match=message):
        masks_to_labels(records)
