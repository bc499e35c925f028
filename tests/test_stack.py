"""Volumes and time-lapses in the core: stacks, propagation, 3D commits, linking into objects and tracks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam.annotation import commit_stack
from napari_sam.errors import Cancelled, ImageError, PromptError
from napari_sam.linking import link_planes, tracks_data
from napari_sam.predictor import Prediction
from napari_sam.propagation import RegionMask, check_propagation, propagate, propagate_stack
from napari_sam.stack import PlaneStack, parse_axes, through_axis


def disk(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def moving_blob(n=12, shape=(64, 80), planes=range(2, 9)) -> np.ndarray:
    """A disk that moves right by 1 px and grows by 0.5 px per plane, on ``planes`` only."""
    volume = np.zeros((n, *shape), bool)
    for k in planes:
        volume[k] = disk(shape, (30, 20 + k), 6 + k / 2)
    return volume


class ThresholdPredictor:
    """A box-only 'model' that segments the bright pixels inside the box (exact, for the propagation logic)."""

    def __init__(self, volume: np.ndarray, scores=None):
        self.volume, self.plane, self.scores = volume, None, scores or {}
        self.spec = SimpleNamespace(supports_points=False, prompt_types=("boxes",))
        self.calls = []

    def set_plane(self, k: int) -> None:
        self.plane = k

    def predict(self, box=None, multimask=None, **_):
        boxes = np.asarray(box, float).reshape(-1, 4)
        self.calls.append((self.plane, len(boxes)))
        masks = []
        for x0, y0, x1, y1 in boxes:
            inside = np.zeros(self.volume.shape[1:], bool)
            inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            masks.append(self.volume[self.plane] & inside)
        masks = np.stack(masks)[:, None]
        iou = np.full((len(boxes), 1), self.scores.get(self.plane, 0.9))
        logits = np.zeros((len(boxes), 1, 256, 256), np.float32)
        out = Prediction(masks, iou, logits)
        return out if len(boxes) > 1 else Prediction(*(a[0] for a in out))


# --------------------------------------------------------------------------- axes and stacks


def test_axes_are_checked_and_the_through_axis_found():
    assert parse_axes(None, 3) == "ZYX" and parse_axes("tyx", 3) == "TYX"
    assert through_axis("TZYX") == 1 and through_axis("TZYX", "T") == 0 and through_axis("YX") is None
    for bad, words in (("ZYX", "names 3 axes"), ("YXZ", "last two"), ("ZZX", "at most once"), ("QYX", "unknown")):
        with pytest.raises(ImageError, match=words):
            parse_axes(bad, 3 if bad != "ZYX" else 4)
    with pytest.raises(ImageError, match="no T axis"):
        through_axis("ZYX", "T")


def test_plane_stack_reads_planes_and_keys_them_apart():
    data = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 3, 4, 5, 3)  # T Z Y X RGB
    stack = PlaneStack.of(data, "TZYX", through="T", rgb=True, position=[0, 2, 0, 0])
    assert len(stack) == 2 and stack.kind == "T" and stack.axis == 0
    np.testing.assert_array_equal(stack.plane(1), data[1, 2])
    model = SimpleNamespace(spec=SimpleNamespace(name="m", image_size=256))
    from napari_sam import embedding

    identity = embedding.model_identity
    embedding.model_identity = lambda m: "weights"
    try:
        keys = {stack.key(k, model, "float32") for k in range(2)}
    finally:
        embedding.model_identity = identity
    assert len(keys) == 2 and {k.plane for k in keys} == {(0, 2), (1, 2)}


# --------------------------------------------------------------------------- propagation (exact)


def test_propagation_follows_a_moving_growing_blob_and_stops_where_it_ends():
    volume = moving_blob()
    fake = ThresholdPredictor(volume)
    result = propagate(fake, fake.set_plane, len(volume), 5, [volume[5]])[0]
    assert result.planes == list(range(2, 9))
    for k in result.planes:
        np.testing.assert_array_equal(result.masks[k].full(), volume[k])
    assert "plane 9" in result.stops[1] and "vanished" in result.stops[1]
    assert "plane 1" in result.stops[-1]


def test_each_stop_criterion_stops_at_its_plane():
    volume = moving_blob(planes=range(0, 12))
    fake = ThresholdPredictor(volume, scores={8: 0.3})
    result = propagate(fake, fake.set_plane, 12, 5, [volume[5]], directions=(1,))[0]
    assert result.planes == [5, 6, 7] and "predicted IoU 0.30 < 0.5" in result.stops[1]
    assert -1 not in result.stops  # one direction only

    jumped = volume.copy()
    jumped[3] = np.roll(volume[3], 9, axis=1)  # the object jumps: the box catches a part of it
    fake = ThresholdPredictor(jumped)
    result = propagate(fake, fake.set_plane, 12, 5, [jumped[5]], directions=(-1,))[0]
    assert result.planes == [4, 5] and "overlap with plane 4" in result.stops[-1]

    shrunk = volume.copy()
    shrunk[7] = disk(volume.shape[1:], (30, 34), 3)  # a quarter of the area: the blur past an end
    fake = ThresholdPredictor(shrunk)
    result = propagate(fake, fake.set_plane, 12, 5, [shrunk[5]], directions=(1,))[0]
    assert result.planes == [5, 6] and "area" in result.stops[1]
    relaxed = propagate(fake, fake.set_plane, 12, 5, [shrunk[5]], directions=(1,),
                        settings=dict(min_area_share=0.0, min_overlap=0.0))[0]
    assert 7 in relaxed.planes


def test_propagation_stops_where_the_object_fades_into_its_background():
    """The mask stays (a 'model' that answers the blob everywhere) but its contrast fades past plane 7:
    the blur past the end of a nucleus in z."""
    from napari_sam.source import PlaneSource

    volume = moving_blob(planes=range(0, 12))
    intensity = np.where(volume, 200, 50).astype(np.uint8)
    for k, level in ((8, 90), (9, 70), (10, 60), (11, 55)):
        intensity[k][volume[k]] = level
    intensity[0, 0, 0], intensity[:, -1, -1] = 0, 255  # one scaling for every plane
    fake = ThresholdPredictor(volume)
    type(fake).source = property(lambda self: PlaneSource(intensity[self.plane]))
    try:
        kept = propagate(fake, fake.set_plane, 12, 5, [volume[5]], directions=(1,),
                         settings=dict(min_contrast_share=0.0))[0]
        assert kept.planes == list(range(5, 12))  # 0 turns it off
        result = propagate(fake, fake.set_plane, 12, 5, [volume[5]], directions=(1,))[0]
    finally:
        del type(fake).source
    assert result.planes == [5, 6, 7] and "contrast 0.27 of the start plane's < 0.5" in result.stops[1]


def test_objects_propagate_together_one_batch_per_plane_and_correction_replaces_the_rest():
    a, b = moving_blob(planes=range(1, 6)), np.zeros((12, 64, 80), bool)
    for k in range(3, 11):
        b[k] = disk((64, 80), (10, 60), 5)
    fake = ThresholdPredictor(a | b)
    results = propagate(fake, fake.set_plane, 12, 4, [a[4], b[4]])
    assert results[0].planes == list(range(1, 6)) and results[1].planes == list(range(3, 11))
    assert all(n == 2 for plane, n in fake.calls if plane in (3, 5))  # both objects in one decoder call

    corrected = b.copy()
    corrected[7:] = False
    for k in range(7, 10):
        corrected[k] = disk((64, 80), (12, 58), 4)
    fake = ThresholdPredictor(corrected)
    again = propagate(fake, fake.set_plane, 12, 7, [corrected[7]], directions=(1,))[0]
    results[1].replace_after(7, 1, again)
    assert results[1].planes == list(range(3, 10))
    np.testing.assert_array_equal(results[1].masks[9].full(), corrected[9])
    np.testing.assert_array_equal(results[1].masks[5].full(), b[5])  # before the correction: kept


def test_propagation_refuses_bad_starts_and_can_be_cancelled():
    volume = moving_blob()
    fake = ThresholdPredictor(volume)
    with pytest.raises(PromptError, match="empty mask"):
        propagate(fake, fake.set_plane, 12, 5, [np.zeros((64, 80), bool)])
    with pytest.raises(PromptError, match="outside the stack"):
        propagate(fake, fake.set_plane, 12, 12, [volume[5]])
    with pytest.raises(PromptError, match="min_iou must be between"):
        check_propagation(min_iou=2)
    with pytest.raises(Cancelled):
        propagate(fake, fake.set_plane, 12, 5, [volume[5]], cancel=lambda: True)


def test_region_masks_keep_crops():
    full = disk((40, 50), (20, 30), 5)
    region = RegionMask.of(full)
    assert region.mask.shape == (11, 11) and region.area == full.sum()
    np.testing.assert_array_equal(region.full(), full)
    assert region.iou(RegionMask.of(full)) == 1.0 and tuple(region.inner_point()) == (30, 20)


def test_lite_medsam_segments_a_blob_through_a_volume(lite_medsam):
    from napari_sam.predictor import Predictor

    truth = moving_blob(n=14, shape=(96, 96), planes=range(3, 11))
    rng = np.random.default_rng(0)
    image = (truth * 150 + 40 + rng.normal(0, 8, truth.shape)).clip(0, 255).astype(np.uint8)
    predictor = Predictor(lite_medsam)
    stack = PlaneStack.of(image)
    stack.predictor_on(predictor, 6)
    ys, xs = np.nonzero(truth[6])
    start = predictor.predict(box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).masks[0]
    result = propagate_stack(stack, predictor, 6, [start])[0]
    volume = np.zeros(truth.shape, bool)
    for k, region in result.masks.items():
        volume[k][region.slices] = region.mask
    iou = (volume & truth).sum() / (volume | truth).sum()
    assert iou > 0.85, iou
    assert result.planes[0] >= 2 and result.planes[-1] <= 11  # stops within a plane of the ends


# --------------------------------------------------------------------------- 3D commit


def test_commit_stack_gives_one_id_per_object_and_honours_the_modes():
    labels = np.zeros((5, 20, 20), np.uint16)
    labels[2, 0:5, 0:5] = 7  # an existing object
    stack = PlaneStack.of(labels)
    a = {k: np.pad(np.ones((4, 4), bool), ((2, 14), (2, 14))) for k in (1, 2, 3)}  # touches label 7 on plane 2
    b = {k: np.pad(np.ones((3, 3), bool), ((12, 5), (12, 5))) for k in (0, 1)}
    result = commit_stack(labels, stack.at, [a, b], "fill_background")
    assert result.ids.tolist() == [8, 9]
    out = labels.copy()
    out[result.indices] = result.values
    assert (out[1][a[1]] == 8).all() and (out[3][a[3]] == 8).all() and (out[0][b[0]] == 9).all()
    assert (out[2, 0:5, 0:5] == 7).all()  # the existing label stays
    kept = commit_stack(labels, stack.at, [a, b], "keep")
    assert kept.ids.tolist() == [0, 8] and kept.planes == [[], [0, 1]]  # a touches 7 on plane 2: on no plane
    over = commit_stack(labels, stack.at, [a, b], "overwrite")
    out = labels.copy()
    out[over.indices] = over.values
    assert (out[2][a[2]] == 8).all()


def test_commit_stack_extends_a_committed_label_with_its_own_id():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[1, 2:6, 2:6] = 4
    mask = np.zeros((10, 10), bool)
    mask[2:7, 2:7] = True
    result = commit_stack(labels, PlaneStack.of(labels).at, [{0: mask, 1: mask, 2: mask}], "keep", ids=[4])
    out = labels.copy()
    out[result.indices] = result.values
    assert result.ids.tolist() == [4] and all((out[k][mask] == 4).all() for k in range(3))


# --------------------------------------------------------------------------- linking


def planes_of(*objects_per_plane, shape=(30, 30)):
    """Per-plane labels from ``[(id, centre, radius), ...]`` per plane."""
    out = np.zeros((len(objects_per_plane), *shape), np.uint16)
    for k, objects in enumerate(objects_per_plane):
        for i, centre, radius in objects:
            out[k][disk(shape, centre, radius)] = i
    return out


def test_linking_keeps_ids_optimally_and_closes_one_plane_gaps():
    # two objects whose per-plane ids swap; a greedy first-come match of object 1 would take the wrong one
    planes = planes_of([(1, (8, 8), 4), (2, (8, 16), 4)], [(5, (8, 15), 4), (3, (8, 9), 4)], [],
                       [(1, (8, 15), 4), (2, (8, 9), 4)], shape=(20, 26))
    planes[2] = planes[1] * 0
    planes[2][disk((20, 26), (8, 9), 4)] = 9  # object A is there; B is missing on plane 2 (a gap)
    linked = link_planes(planes, min_extent=1).labels
    a, b = linked[0, 8, 8], linked[0, 8, 16]
    assert linked[1, 8, 9] == a and linked[1, 8, 15] == b
    assert linked[2, 8, 9] == a and linked[3, 8, 9] == a
    assert linked[3, 8, 15] == b  # back after the gap with its id
    assert link_planes(planes, max_gap=0, min_extent=1).labels[3, 8, 15] not in (a, b)


def test_linking_drops_short_objects_and_handles_merges():
    planes = planes_of([(1, (10, 8), 4), (2, (10, 20), 4)], [(1, (10, 14), 7)], [(1, (10, 14), 7)],
                       [(3, (25, 25), 2)])
    linked = link_planes(planes, min_overlap=0.1, min_extent=2).labels
    merged = linked[1, 10, 14]
    assert linked[2, 10, 14] == merged and {linked[0, 10, 8], linked[0, 10, 20]} == {merged, 0}
    assert not linked[3].any()  # the tiny object and the merged-away one are on one plane only: dropped
    everything = link_planes(planes, min_overlap=0.1, min_extent=1).labels
    assert len({everything[0, 10, 8], everything[0, 10, 20], everything[3, 25, 25]}) == 3


def test_divisions_end_the_parent_and_record_two_children():
    frames = planes_of([(1, (15, 15), 6)], [(1, (15, 15), 6)], [(4, (15, 11), 4), (6, (15, 20), 4)],
                       [(2, (15, 10), 4), (1, (15, 21), 4)])
    linked = link_planes(frames, min_extent=1, divisions=True)
    parent = linked.labels[0, 15, 15]
    left, right = linked.labels[2, 15, 11], linked.labels[2, 15, 20]
    assert linked.labels[1, 15, 15] == parent and len({parent, left, right}) == 3
    assert linked.parents == {int(left): int(parent), int(right): int(parent)}
    assert linked.labels[3, 15, 10] == left and linked.labels[3, 15, 21] == right  # ids kept after the division
    assert linked.graph() == {int(left): [int(parent)], int(right): [int(parent)]}
    data = tracks_data(linked.labels)
    assert data.shape == (6, 4) and set(data[:, 0].astype(int)) == {parent, left, right}
    assert not link_planes(frames, min_extent=1).parents


def test_the_widgets_link_choice_links_along_the_first_axis():
    from napari_sam.automatic.planes import link_planes_of

    planes = planes_of([(1, (10, 10), 5)], [(7, (10, 11), 5)], [(3, (10, 12), 5)])
    assert link_planes_of(planes, "none").labels is planes
    linked = link_planes_of(planes, "objects").labels
    assert len({linked[0, 10, 10], linked[1, 10, 11], linked[2, 10, 12]}) == 1
    assert link_planes_of(planes, "tracks", planes=[(1,)]).labels is planes  # one plane: nothing to link
    with pytest.raises(PromptError.__mro__[1], match="Unknown link"):
        link_planes_of(planes, "sideways")
