"""The napari-free logic of automatic segmentation: parameters, Shapes rectangles -> boxes,
plane iteration over stacks (napari_sam.automatic.planes)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from skimage import draw

from napari_sam.automatic import Cancelled, generate_masks
from napari_sam.automatic import planes as P
from napari_sam.automatic.parameters import AMG_PARAMETERS
from napari_sam.errors import ImageError, PromptError


def rectangle(r0, c0, r1, c1, lead=()):
    corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)
    return np.concatenate([np.tile(np.asarray(lead, float), (4, 1)), corners], axis=1) if lead else corners


# ----------------------------------------------------------------------- parameters


def test_parameters_have_the_official_defaults_and_ranges():
    from napari_sam.cli import _parser

    signature = inspect.signature(generate_masks).parameters
    segment = next(a for a in _parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("segment"))
    flags = {action.dest: action for action in segment._actions}
    for name, p in AMG_PARAMETERS.items():
        assert p.default == signature[name].default == flags[name].default, name  # one table, three places
        if p.choices:
            assert tuple(flags[name].choices) == p.choices and p.default in p.choices
            assert f"default {p.default}" in flags[name].help
        else:
            assert flags[name].type is p.kind and f"default {p.default:g}" in flags[name].help
            assert p.minimum <= p.default <= p.maximum
        assert len(p.tooltip) > 30
        assert p.used_by("points") or p.used_by("boxes")
        assert ("box proposals only" in flags[name].help) == (not p.used_by("points"))
    assert AMG_PARAMETERS["crop_overlap_ratio"].default == 512 / 1500
    assert P.amg_kwargs() == {name: p.default for name, p in AMG_PARAMETERS.items()}
    chosen = P.amg_kwargs({"points_per_side": 16.0, "pred_iou_thresh": 0.5})
    assert chosen["points_per_side"] == 16 and isinstance(chosen["points_per_side"], int)
    assert chosen["pred_iou_thresh"] == 0.5 and chosen["box_nms_thresh"] == 0.7


@pytest.mark.parametrize("values, text", [
    ({"points_per_sid": 3}, "Unknown automatic segmentation parameter.*points_per_sid"),
    ({"points_per_side": 0}, "points_per_side must be between 1 and 256"),
    ({"pred_iou_thresh": 1.5}, "pred_iou_thresh must be between 0 and 1"),
    ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh must be between 0 and 1"),
    ({"box_nms_thresh": -1}, "box_nms_thresh must be between 0 and 1"),
    ({"crop_overlap_ratio": -0.5}, "crop_overlap_ratio must be between 0 and 0.99"),
    ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor must be between 1 and 16"),
    ({"crop_n_layers": 5}, "crop_n_layers must be between 0 and 4"),
    ({"crop_n_layers": 1.5}, "crop_n_layers must be a whole number"),
    ({"points_per_batch": "many"}, "points_per_batch must be a number"),
    ({"polarity": "bright-ish"}, "polarity must be one of 'auto', 'bright', 'dark'"),
    ({"object_diameter": -3}, "object_diameter must be between 0 and 2000"),
    ({"max_windows": 2.5}, "max_windows must be a whole number"),
])
def test_bad_parameters_are_refused_with_a_message(values, text):
    with pytest.raises(PromptError, match=text):
        P.amg_kwargs(values)
    if set(values) <= set(AMG_PARAMETERS):  # (an unknown keyword is Python's TypeError there)
        with pytest.raises(PromptError, match=text):  # the same check in generate_masks itself
            generate_masks(np.zeros((32, 32), np.uint8), None, **values)


def test_strategy_names_and_result_names():
    from dataclasses import replace

    from napari_sam.registry import get_spec

    lite, sam = get_spec("lite_medsam"), get_spec("vit_b")
    assert P.effective_strategy("auto", lite) == "boxes"
    assert P.effective_strategy("auto", sam) == "points"
    assert P.effective_strategy("points", lite) == "points"
    # A LiteMedSAM fine-tuned on clicks keeps the zoomed box proposals of its base.
    tuned = replace(lite, prompt_types=("boxes", "points", "masks"), automatic="boxes")
    assert tuned.supports_points and P.effective_strategy("auto", tuned) == "boxes"
    assert P.result_name("coins", "everything", "lite_medsam") == "coins auto (lite_medsam)"
    assert P.result_name("cells", "labels", "vit_b") == "cells refined (vit_b)"
    assert set(P.MODES) == {"everything", "boxes", "labels", "edges"}


# ----------------------------------------------------------------------- planes and shapes


def test_plane_indices_all_or_current():
    assert P.plane_indices((40, 50)) == [()]
    assert P.plane_indices((40, 50), current=(3.0, 4.0)) == [()]
    assert P.plane_indices((3, 40, 50)) == [(0,), (1,), (2,)]
    assert P.plane_indices((2, 3, 40, 50)) == [(t, z) for t in range(2) for z in range(3)]
    assert P.plane_indices((3, 40, 50), current=(1.6, 20.0, 7.0)) == [(2,)]
    assert P.plane_indices((3, 40, 50), current=(9.0, 0, 0)) == [(2,)]  # clipped into the stack
    assert P.plane_indices((2, 3, 40, 50), current=(1, -4, 0, 0)) == [(1, 0)]


def test_rectangles_become_xy_boxes_per_plane():
    shapes = [rectangle(10, 20, 30, 60), rectangle(35, 5, 5, 25)]  # rows, cols; corners in any order
    boxes = P.boxes_from_shapes(shapes, ["rectangle"] * 2, (50, 80))
    assert list(boxes) == [None]
    xy, ids = boxes[None]
    np.testing.assert_array_equal(xy, [[20, 10, 60, 30], [5, 5, 25, 35]])
    np.testing.assert_array_equal(ids, [1, 2])

    stack = [rectangle(1, 2, 9, 12, lead=(2,)), rectangle(0, 0, 5, 5, lead=(0,)), rectangle(3, 3, 6, 8, lead=(2,))]
    per_plane = P.boxes_from_shapes(stack, ["rectangle"] * 3, (3, 20, 20))
    assert sorted(per_plane) == [(0,), (2,)]
    np.testing.assert_array_equal(per_plane[(2,)][0], [[2, 1, 12, 9], [3, 3, 8, 6]])
    np.testing.assert_array_equal(per_plane[(2,)][1], [1, 3])  # ids are the shapes' rows + 1
    np.testing.assert_array_equal(per_plane[(0,)][1], [2])
    # 2D rectangles over a stack apply to every plane
    assert list(P.boxes_from_shapes([rectangle(0, 0, 4, 4)], ["rectangle"], (3, 20, 20))) == [None]


@pytest.mark.parametrize("shapes, types, shape, text", [
    ([], [], (50, 50), "The Shapes layer is empty"),
    ([rectangle(0, 0, 5, 5), np.array([[0, 0], [5, 9], [9, 2.0]])], ["rectangle", "polygon"], (50, 50),
     r"1 shape\(s\) are not rectangles \(polygon, e.g. shape 2\)"),
    ([np.array([[0, 0, 0], [1, 0, 5], [1, 5, 5], [0, 5, 0.0]])], ["rectangle"], (3, 50, 50), "not on one plane"),
    ([rectangle(0, 0, 5, 5, lead=(1,))], ["rectangle"], (50, 50), "3-D vertices but the image has 2 spatial axes"),
])
def test_bad_shapes_are_refused_with_a_message(shapes, types, shape, text):
    with pytest.raises(PromptError, match=text):
        P.boxes_from_shapes(shapes, types, shape)


def test_layer_coordinates_map_to_image_data_coordinates():
    # a Shapes layer at scale 1 over an image at scale 2 translated by 10 (world units)
    vertices = np.array([[10.0, 10.0], [30.0, 50.0]])
    mapped = P.to_data_frame(vertices, (1, 1), (0, 0), (2, 2), (10, 10))
    np.testing.assert_allclose(mapped, [[0, 0], [10, 20]])
    # 2D layer over a 3D image: trailing axes are aligned
    mapped = P.to_data_frame(vertices, (1, 1), (0, 0), (5, 2, 2), (0, 10, 10))
    np.testing.assert_allclose(mapped, [[0, 0], [10, 20]])
    # a 3D layer over a 2D image keeps its leading axis (boxes_from_shapes then refuses it)
    mapped = P.to_data_frame(np.array([[1.0, 10, 10], [1.0, 30, 50]]), (1, 1, 1), (0, 0, 0), (2, 2), (10, 10))
    np.testing.assert_allclose(mapped, [[1, 0, 0], [1, 10, 20]])


def test_rough_labels_must_cover_the_image():
    P.check_rough_labels((3, 40, 50), (3, 40, 50))
    with pytest.raises(PromptError, match=r"shape \(40, 40\) but the image is \(40, 50\)"):
        P.check_rough_labels((40, 40), (40, 50))


# ----------------------------------------------------------------------- running on stacks


@pytest.fixture
def fake_planes(monkeypatch):
    """Replace the model call: plane k of the stack gets objects 1..k+1 (a square each)."""
    calls = []

    def segment_plane(request, model, plane, source, progress, cancel, store=None, key=None):
        calls.append(plane)
        progress(1, 2)
        out = np.zeros(source.shape, np.uint32)
        for k in range(int(source.data.max()) + 1):
            out[2 * k : 2 * k + 2, :2] = k + 10  # ids 10.. (not sequential) must be renumbered
        return out

    monkeypatch.setattr(P, "_segment_plane", segment_plane)
    return calls


def test_every_plane_gets_unique_ids_and_progress_reaches_the_end(fake_planes):
    stack = np.zeros((3, 12, 12), np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None]
    seen = []
    out = P.segment_stack(P.StackRequest(image=stack, mode="everything", planes=P.plane_indices(stack.shape)),
                          model=None, progress=lambda done, n: seen.append((done, n)))
    assert fake_planes == [(0,), (1,), (2,)]
    assert [sorted(np.unique(p))[1:] for p in out] == [[1], [2, 3], [4, 5, 6]]
    assert seen == sorted(seen) and seen[-1] == (3, 3) and (0.5, 3) in seen


def test_current_plane_only_fills_that_plane_of_a_full_volume(fake_planes):
    stack = np.ones((4, 10, 12, 3), np.uint8)  # RGB stack
    request = P.StackRequest(image=stack, mode="everything", rgb=True,
                             planes=P.plane_indices((4, 10, 12), current=(2, 5, 5)))
    out = P.segment_stack(request, model=None)
    assert out.shape == (4, 10, 12) and out.dtype == np.uint32
    assert fake_planes == [(2,)]
    assert out[2].any() and not out[[0, 1, 3]].any()


def test_cancel_between_planes_returns_nothing(fake_planes):
    stack = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(Cancelled):
        P.segment_stack(P.StackRequest(image=stack, mode="everything", planes=P.plane_indices(stack.shape)),
                        model=None, cancel=lambda: len(fake_planes) >= 1)
    assert fake_planes == [(0,)]


def test_requests_without_usable_input_are_refused():
    image = np.zeros((3, 20, 20), np.uint8)
    with pytest.raises(PromptError, match="have shape"):
        P.segment_stack(P.StackRequest(image=image, mode="labels", planes=[(0,)],
                                       rough_labels=np.zeros((20, 20), np.uint8)), model=None)
    rough = np.zeros((3, 20, 20), np.uint16)
    rough[2, 5:9, 5:9] = 4
    with pytest.raises(PromptError, match="no object on the plane"):
        P.segment_stack(P.StackRequest(image=image, mode="labels", planes=[(0,)], rough_labels=rough), model=None)
    boxes = P.boxes_from_shapes([rectangle(1, 1, 9, 9, lead=(2,))], ["rectangle"], image.shape)
    with pytest.raises(PromptError, match=r"No rectangle on the plane\(s\) to segment \(\(0,\)\)"):
        P.segment_stack(P.StackRequest(image=image, mode="boxes", planes=[(0,)], boxes=boxes), model=None)
    with pytest.raises(ImageError, match="no 2D plane"):
        P.segment_stack(P.StackRequest(image=np.zeros(5), mode="everything", planes=[()]), model=None)


def discs(shape=(96, 96), centres=((25, 25), (30, 70), (70, 45)), radius=11) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a dark, slightly noisy background, and their labels 1..N."""
    labels = np.zeros(shape, np.uint16)
    for k, (r, c) in enumerate(centres):
        labels[draw.disk((r, c), radius, shape=shape)] = k + 1
    noise = np.random.default_rng(0).normal(0, 6, shape)
    return np.clip(30 + 170 * (labels > 0) + noise, 0, 255).astype(np.uint8), labels


def test_real_model_on_a_stack_keeps_box_and_label_ids(lite_medsam):
    image, truth = discs()
    stack = np.stack([image, np.zeros_like(image), image])
    # boxes on planes 0 and 2 (rows 1 and 2 of the layer), none on plane 1
    rows = [(0, (14, 14, 37, 37)), (2, (58, 33, 82, 57))]
    shapes = [rectangle(*box, lead=(z,)) for z, box in rows]
    boxes = P.boxes_from_shapes(shapes, ["rectangle"] * 2, stack.shape)
    out = P.segment_stack(P.StackRequest(image=stack, mode="boxes", planes=P.plane_indices(stack.shape),
                                         boxes=boxes), lite_medsam)
    assert out.shape == stack.shape and not out[1].any()
    for (z, _), label, true_id in zip(rows, (1, 2), (1, 3)):
        got, want = out[z] == label, truth == true_id
        assert (got & want).sum() / (got | want).sum() > 0.85

    # rough labels: squares around discs 1 and 3 with ids 7 and 9 on plane 2 only -> discs, same ids
    rough = np.zeros(stack.shape, np.uint16)
    rough[2, 13:38, 13:38] = 7
    rough[2, 58:83, 33:58] = 9
    assert ((rough[2] == 7) & (truth == 1)).sum() / ((rough[2] == 7) | (truth == 1)).sum() < 0.7
    refined = P.segment_stack(P.StackRequest(image=stack, mode="labels", planes=[(2,)], rough_labels=rough),
                              lite_medsam)
    assert refined.dtype == np.uint16 and sorted(np.unique(refined)) == [0, 7, 9]
    assert not refined[:2].any()
    for rough_id, true_id in ((7, 1), (9, 3)):
        got, want = refined[2] == rough_id, truth == true_id
        assert (got & want).sum() / (got | want).sum() > 0.85
