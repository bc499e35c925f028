"""The annotator's non-GUI logic: planes, prompts, mask choice, commits (no viewer)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skdata

from napari_sam.annotation import (
    COMMIT_MODES,
    MaskChoice,
    ObjectPrompt,
    PlaneGeometry,
    boxes_on_plane,
    commit_masks,
    group_prompts,
    image_plane,
    next_free_id,
    points_on_plane,
    spatial_shape,
)
from napari_sam.errors import ImageError
from napari_sam.interactive import RefinementMemory, predict_objects
from napari_sam.predictor import RegionPrediction
from napari_sam.registry import get_spec

# ----------------------------------------------------------------------- planes


def test_spatial_shape_drops_channel_axes():
    assert spatial_shape((5, 40, 60)) == (5, 40, 60)
    assert spatial_shape((40, 60, 3), rgb=True) == (40, 60)
    assert spatial_shape((3, 5, 40, 60), channel_axis=0) == (5, 40, 60)
    with pytest.raises(ImageError, match="fewer than two spatial axes"):
        spatial_shape((40, 3), rgb=True)
    with pytest.raises(ImageError, match="does not exist"):
        spatial_shape((40, 60), channel_axis=4)


def test_geometry_at_rounds_and_clips():
    geometry = PlaneGeometry.at((4, 30, 50), (1, 2), (7.6, 2.2, -3))
    assert geometry.position == (3, 2, 0)
    assert geometry.plane_axes == (0,)
    assert geometry.plane_index == (3,)
    assert geometry.plane_shape == (30, 50)
    assert PlaneGeometry.at((30, 50), (0, 1), (0, 0)).plane_index == ()
    with pytest.raises(ImageError):
        PlaneGeometry((4, 30, 50), (1, 1), (0, 0, 0))


def test_plane_read_write_and_volume_indices_agree():
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 100, (3, 4, 5, 6))
    for displayed in [(2, 3), (1, 3), (3, 1)]:
        geometry = PlaneGeometry.at(volume.shape, displayed, (2, 1, 3, 4))
        plane = geometry.read(volume)
        assert plane.shape == geometry.plane_shape
        rows, cols = np.indices(plane.shape).reshape(2, -1)
        np.testing.assert_array_equal(volume[geometry.volume_indices(rows, cols)], plane[rows, cols])
        target = np.zeros_like(volume)
        geometry.write(target, plane)
        np.testing.assert_array_equal(target[geometry.slicer()], volume[geometry.slicer()])
        assert target.sum() == volume[geometry.slicer()].sum()
    # the collapsed form indexes a preview of size 1 on the slider axes
    geometry = PlaneGeometry.at(volume.shape, (2, 3), (2, 1, 0, 0))
    preview = np.zeros((1, 1, 5, 6), np.uint8)
    geometry.write(preview, np.ones((5, 6), np.uint8), collapsed=True)
    assert preview.sum() == 30


def test_image_plane_gray_rgb_and_channel_axis():
    rgb = skdata.astronaut()[:64, :80]  # 64 x 80 x 3
    stack = np.stack([rgb, rgb[::-1]])  # 2 x 64 x 80 x 3
    geometry = PlaneGeometry.at(spatial_shape(stack.shape, rgb=True), (1, 2), (1, 0, 0))
    np.testing.assert_array_equal(image_plane(stack, geometry, rgb=True), rgb[::-1])
    channels_first = np.moveaxis(stack, -1, 0)  # 3 x 2 x 64 x 80
    geometry = PlaneGeometry.at(spatial_shape(channels_first.shape, channel_axis=0), (1, 2), (1, 0, 0))
    np.testing.assert_array_equal(image_plane(channels_first, geometry, channel_axis=0), rgb[::-1])
    gray = skdata.camera()[:50, :70]
    transposed = PlaneGeometry.at(gray.shape, (1, 0), (0, 0))
    np.testing.assert_array_equal(image_plane(gray, transposed), gray.T)


# ----------------------------------------------------------------------- prompts


def test_points_and_boxes_on_plane_convert_to_xy():
    geometry = PlaneGeometry.at((5, 100, 200), (1, 2), (2, 0, 0))
    points = np.array([[2, 10, 20], [3, 11, 21], [2.2, 30, 40]])  # (z, row, col)
    indices, xy = points_on_plane(points, geometry)
    np.testing.assert_array_equal(indices, [0, 2])
    np.testing.assert_array_equal(xy, [[20, 10], [40, 30]])
    rectangle = np.array([[2, 10, 20], [2, 10, 60], [2, 50, 60], [2, 50, 20]], float)
    other_plane = rectangle + [1, 0, 0]
    flat = np.array([[2, 10, 20], [2, 10, 60], [2, 10, 60], [2, 10, 20]], float)
    indices, boxes = boxes_on_plane([rectangle, other_plane, flat], geometry)
    np.testing.assert_array_equal(indices, [0])
    np.testing.assert_array_equal(boxes, [[20, 10, 60, 50]])  # x0, y0, x1, y1


def test_group_prompts_assigns_points_to_nearest_box():
    boxes = np.array([[0, 0, 10, 10], [20, 0, 40, 10], [50, 50, 100, 100], [0, 0, 30, 30]], float)
    points = np.array([[5, 5], [30, 5], [60, 60], [35, 12]], float)
    labels = np.array([1, 0, 1, 1])
    objects = group_prompts(points, labels, boxes, point_indices=np.array([7, 8, 9, 10]))
    assert [o.box_index for o in objects] == [0, 1, 2, 3]
    assert len(objects[3].points) == 0
    # (5, 5) is inside boxes 0 and 3: the smaller one wins
    np.testing.assert_array_equal(objects[0].point_indices, [7])
    np.testing.assert_array_equal(objects[1].point_indices, [8, 10])  # inside, and 2 px below box 1
    np.testing.assert_array_equal(objects[1].labels, [0, 1])
    np.testing.assert_array_equal(objects[2].points, [[60, 60]])


def test_group_prompts_without_boxes():
    assert group_prompts(np.zeros((0, 2)), np.zeros(0), np.zeros((0, 4))) == []
    assert group_prompts([[1, 2]], [0], np.zeros((0, 4))) == []  # negative points alone: nothing
    (obj,) = group_prompts([[1, 2], [3, 4]], [1, 0], np.zeros((0, 4)))
    assert obj.box is None and obj.has_points and obj.labels.tolist() == [1, 0]
    (obj,) = group_prompts([[1, 2]], [1], [[0, 0, 9, 9]])  # one box takes every point
    assert obj.box_index == 0 and len(obj.points) == 1


def test_refinement_memory_feeds_back_only_when_points_are_added():
    memory = RefinementMemory()
    logits = np.full((256, 256), 3.0, np.float32)
    first = ObjectPrompt(np.array([0, 0, 9, 9.0]), np.array([[1.0, 1]]), np.array([1]))
    assert memory.mask_input(first) is None
    memory.remember(first, logits)
    more = ObjectPrompt(first.box, np.array([[1.0, 1], [5, 5]]), np.array([1, 0]))
    assert memory.mask_input(more) is logits
    assert memory.mask_input(first) is None  # same prompt again: predict afresh
    moved = ObjectPrompt(first.box + 1, more.points, more.labels)
    assert memory.mask_input(moved) is None
    changed = ObjectPrompt(first.box, np.array([[2.0, 1], [5, 5]]), np.array([1, 0]))
    assert memory.mask_input(changed) is None
    memory.clear()
    assert len(memory) == 0 and memory.mask_input(more) is None


def test_mask_choice_starts_at_best_and_cycles():
    choice = MaskChoice([np.array([0.5, 0.9, 0.7])])
    assert choice.indices() == [1]
    assert "mask 2/3" in choice.describe() and "0.90" in choice.describe()
    seen = [choice.indices()[0]]
    for _ in range(3):
        assert choice.cycle()
        seen.append(choice.indices()[0])
    assert seen == [1, 2, 0, 1]
    single = MaskChoice([np.array([0.8]), np.array([0.6])])
    assert not single.cycle() and single.indices() == [0, 0]
    assert "2 objects" in single.describe()


# ----------------------------------------------------------------------- commit


def _disk(shape, center, radius):
    rows, cols = np.indices(shape)
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def test_next_free_id():
    assert next_free_id(np.zeros((4, 4), np.uint8)) == 1
    assert next_free_id(np.array([[0, 7], [3, 0]])) == 8


def test_commit_modes_on_overlapping_objects():
    labels = np.zeros((40, 40), np.uint16)
    labels[_disk(labels.shape, (10, 10), 6)] = 5
    a = _disk(labels.shape, (10, 18), 6)  # overlaps label 5
    b = _disk(labels.shape, (30, 30), 5)  # free
    masks = np.stack([a, b])

    fill = commit_masks(labels, masks, "fill_background")
    assert fill.ids.tolist() == [6, 7]
    assert (fill.plane[labels == 5] == 5).all()  # existing labels untouched
    assert (fill.plane == 6).sum() == (a & (labels == 0)).sum()
    assert (fill.plane == 7).sum() == b.sum()
    np.testing.assert_array_equal(fill.changed, fill.plane != labels)
    assert labels.max() == 5  # input not modified

    keep = commit_masks(labels, masks, "keep")
    assert keep.ids.tolist() == [0, 6]  # the touching object is skipped, ids stay consecutive
    assert keep.skipped.tolist() == [0] and keep.written_ids.tolist() == [6]
    assert (keep.plane == 6).sum() == b.sum() and (keep.plane == 5).sum() == (labels == 5).sum()

    over = commit_masks(labels, masks, "overwrite")
    assert over.ids.tolist() == [6, 7]
    assert (over.plane == 6).sum() == a.sum()
    assert (over.plane == 5).sum() == ((labels == 5) & ~a).sum()


def test_commit_overlap_between_new_objects_and_empty_masks():
    labels = np.zeros((30, 30), np.int32)
    a = _disk(labels.shape, (15, 12), 6)
    b = _disk(labels.shape, (15, 18), 6)
    empty = np.zeros_like(a)
    first_wins = commit_masks(labels, np.stack([a, empty, b]), "fill_background", next_id=10)
    assert first_wins.ids.tolist() == [10, 0, 11]
    assert (first_wins.plane[a] == 10).all()
    last_wins = commit_masks(labels, np.stack([a, b]), "overwrite", next_id=10)
    assert (last_wins.plane[b] == 11).all()
    assert (last_wins.plane == 10).sum() == (a & ~b).sum()
    single = commit_masks(labels, a)  # one H x W mask, default mode and id
    assert single.ids.tolist() == [1] and (single.plane == 1).sum() == a.sum()


def test_commit_errors():
    labels = np.zeros((10, 10), np.uint8)
    labels[0, 0] = 255
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True
    with pytest.raises(ImageError, match="uint8.*astype"):
        commit_masks(labels, mask)
    with pytest.raises(ImageError, match="Unknown commit mode"):
        commit_masks(labels, mask, mode="replace")
    with pytest.raises(ImageError, match="do not fit"):
        commit_masks(labels, np.zeros((1, 9, 10), bool))
    assert set(COMMIT_MODES) == {"fill_background", "keep", "overwrite"}


class _RecordingPredictor:
    """Stands in for Predictor: records calls, returns masks that encode the call."""

    def __init__(self, spec):
        self.spec = spec
        self.calls = []

    large = False
    image_shape = (8, 8)

    def predict_regions(self, points=None, labels=None, box=None, mask_input=None, multimask=None):
        self.calls.append(dict(points=points, box=box, mask_input=mask_input, multimask=multimask))
        boxes = np.atleast_2d(box) if box is not None else np.zeros((1, 4))
        c = 1 if multimask is False or not self.spec.multimask else 3
        masks = np.zeros((c, 8, 8), bool)
        masks[:, 0, 0] = True
        return [RegionPrediction(masks, np.full(c, 0.5), np.full((c, 256, 256), 1.0), (0, 0, 8, 8))
                for _ in boxes]


def test_predict_objects_batches_boxes_and_feeds_back_logits():
    sam = _RecordingPredictor(get_spec("vit_b"))
    memory = RefinementMemory()
    boxes = np.array([[0, 0, 4, 4], [10, 10, 20, 20], [30, 30, 40, 40.0]])
    objects = group_prompts([[15, 15]], [1], boxes)
    results = predict_objects(sam, objects, memory)
    assert [r.masks.shape for r in results] == [(3, 8, 8)] * 3
    assert len(sam.calls) == 2  # boxes 0 and 2 in one batch, the box with a point alone
    np.testing.assert_array_equal(sam.calls[0]["box"], boxes[[0, 2]])
    assert sam.calls[1]["mask_input"] is None and sam.calls[1]["multimask"] is None
    memory.remember(objects[1], results[1].low_res_logits[0])
    refined = group_prompts([[15, 15], [12, 18]], [1, 0], boxes[1:2])
    (result,) = predict_objects(sam, refined, memory)
    assert sam.calls[-1]["mask_input"] is not None and sam.calls[-1]["multimask"] is False
    assert result.masks.shape == (1, 8, 8)
    # a model not trained on mask prompts never gets them
    medsam = _RecordingPredictor(get_spec("lite_medsam"))
    predict_objects(medsam, refined, memory)
    assert medsam.calls[-1]["mask_input"] is None


def test_fill_background_leaves_no_slivers_between_existing_labels():
    """A mask spilling past an existing object left 1-pixel fragments on its far side."""
    labels = np.zeros((40, 40), np.uint16)
    labels[5:35, 20:22] = 3  # a wall, two pixels thick
    mask = np.zeros((40, 40), bool)
    mask[10:30, 8:20] = True  # the object, left of the wall
    mask[15, 20:23] = True  # ... and a spill one pixel past it
    fill = commit_masks(labels, mask, "fill_background")
    assert (fill.plane == 4).sum() == 20 * 12  # the object, without the sliver at (15, 22)
    assert fill.plane[15, 22] == 0
    halves = np.zeros((40, 40), bool)
    halves[10:30, 8:34] = True  # an object the wall cuts into two large parts: both are kept
    both = commit_masks(labels, halves, "fill_background")
    assert (both.plane == 4).sum() == (halves & (labels == 0)).sum()
