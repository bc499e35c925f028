"""The automatic segmentation widget in a real viewer (run under Xvfb: ``xvfb-run -a pytest``).

Results are compared with reference coin masks (tests/coins_reference.py); every test
checks that the layers that existed before a run are left exactly as they were.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
from coins_reference import coin_masks, iou
from napari.utils.notifications import notification_manager

from napari_sam._widgets.automatic import AutomaticSegmentationWidget
from napari_sam.automatic.parameters import AMG_PARAMETERS

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def points_model(lite_medsam):
    """LiteMedSAM's weights declared as a point-prompt model: strategy 'auto' -> the point grid."""
    model = copy.deepcopy(lite_medsam)
    model.spec = replace(model.spec, name="lite_points", prompt_types=("points", "boxes", "masks"), multimask=True)
    return model


@pytest.fixture(scope="module")
def coins():
    """(image, {coin id: mask}) of the reference coins."""
    image, regions = coin_masks()
    masks = {}
    for region in regions:
        mask = np.zeros(image.shape, bool)
        mask[tuple(region.coords.T)] = True
        masks[region.label] = mask
    return image, masks


@pytest.fixture
def open_widget(make_napari_viewer, qtbot):
    widgets = []

    def open_(model, show=False):
        viewer = make_napari_viewer(show=show)
        widget = AutomaticSegmentationWidget(viewer, model=model)
        viewer.window.add_dock_widget(widget, name="Automatic segmentation")
        widgets.append(widget)
        return viewer, widget

    yield open_
    for widget in widgets:  # no worker may outlive its viewer
        qtbot.waitUntil(lambda: not widget.running, timeout=300_000)


def run(widget, qtbot, timeout=120_000):
    worker = widget.run()
    assert worker is not None, widget.status.value
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def snapshot(viewer) -> dict:
    return {layer.name: copy.deepcopy(layer.data) for layer in viewer.layers}


def assert_unchanged(viewer, before: dict) -> None:
    for name, data in before.items():
        now = viewer.layers[name].data
        if isinstance(data, list):
            assert len(now) == len(data) and all(np.array_equal(a, b) for a, b in zip(now, data))
        else:
            np.testing.assert_array_equal(now, data)


def messages(since: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[since:]]


def shown(widget) -> bool:
    """Whether a control is shown in its dock widget (the viewer window itself may be hidden)."""
    return widget.native.isVisibleTo(widget.native.parentWidget())


def rectangle(mask: np.ndarray, lead=()) -> np.ndarray:
    """A (row, col) rectangle 2 px around a mask, optionally on a plane."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min() - 2, rows.max() + 2, cols.min() - 2, cols.max() + 2
    corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)
    return np.concatenate([np.tile(np.asarray(lead, float), (4, 1)), corners], 1) if lead else corners


# ----------------------------------------------------------------------- 2D


def test_plugin_widget_defaults_and_segment_everything(make_napari_viewer, qtbot, coins):
    image, masks = coins
    viewer = make_napari_viewer()
    crop = image[:128, :160]
    viewer.add_image(crop, name="coins", scale=(2, 2), translate=(5, 7))
    mine = viewer.add_labels(np.eye(128, 160, dtype=np.uint8) * 3, name="mine", scale=(2, 2), translate=(5, 7))
    _, widget = viewer.window.add_plugin_dock_widget("napari-samkit", "Automatic segmentation")
    assert isinstance(widget, AutomaticSegmentationWidget)
    try:
        # every parameter with Meta's default and a tooltip that says what it does, except the two
        # thresholds the box strategy of box-only lite_medsam replaces: the values it really uses
        from napari_sam.automatic.box_strategy import effective_thresholds

        used = dict(zip(("pred_iou_thresh", "stability_score_thresh"), effective_thresholds(None, None)))
        assert widget.parameter_values() == {name: used.get(name, p.default) for name, p in AMG_PARAMETERS.items()}
        for name, p in AMG_PARAMETERS.items():
            assert p.tooltip[:40] in widget.params[name].tooltip
        assert widget.model.value == "lite_medsam" and widget.strategy.value == "auto"
        assert not widget.params["points_per_side"].enabled  # lite_medsam is box-only: auto = box proposals
        assert widget.params["min_mask_region_area"].enabled and not shown(widget.current_plane)
        before = snapshot(viewer)

        widget.image.value = viewer.layers["coins"]
        run(widget, qtbot)
        assert [layer.name for layer in viewer.layers] == ["coins", "mine", "coins auto (lite_medsam)"]
        result = viewer.layers["coins auto (lite_medsam)"]
        assert type(result) is type(mine) and result.data.shape == crop.shape
        np.testing.assert_allclose(result.scale, (2, 2))
        np.testing.assert_allclose(result.translate, (5, 7))
        assert result.data.max() > 0 and "object(s)" in widget.status.value
        for coin_id in (5, 6):  # the two whole reference coins inside the crop
            ref = masks[coin_id][:128, :160]
            best = np.bincount(result.data[ref]).argmax()
            assert best > 0 and iou(result.data == best, ref) > 0.85
        assert_unchanged(viewer, before)
    finally:
        qtbot.waitUntil(lambda: not widget.running, timeout=300_000)


def test_boxes_from_shapes_become_labels_1_to_n(open_widget, lite_medsam, coins, qtbot):
    image, masks = coins
    viewer, widget = open_widget(lite_medsam)
    viewer.add_image(image, name="coins")
    chosen = [5, 9, 14, 20]
    viewer.add_shapes([rectangle(masks[c]) for c in chosen], shape_type="rectangle", name="my boxes")
    before = snapshot(viewer)
    widget.mode.value = "boxes"
    assert shown(widget.source) and widget.source.value is viewer.layers["my boxes"]
    run(widget, qtbot)
    result = viewer.layers["coins boxes (lite_medsam)"].data
    assert sorted(np.unique(result)) == [0, 1, 2, 3, 4]
    for label, coin_id in enumerate(chosen, start=1):
        assert iou(result == label, masks[coin_id]) > 0.85
    assert_unchanged(viewer, before)


def test_rough_labels_are_refined_with_the_same_ids(open_widget, lite_medsam, coins, qtbot):
    image, masks = coins
    viewer, widget = open_widget(lite_medsam)
    viewer.add_image(image, name="coins")
    rough = np.zeros(image.shape, np.uint16)
    from scipy import ndimage as ndi

    ids = {5: 40, 9: 12, 20: 7}  # coin -> rough id
    for coin_id, rough_id in ids.items():  # rough: dilated by 4 px and shifted by 3 px
        rough[np.roll(ndi.binary_dilation(masks[coin_id], iterations=4), 3, axis=1)] = rough_id
    viewer.add_labels(rough, name="rough")
    before = snapshot(viewer)
    widget.mode.value = "labels"
    widget.source.value = viewer.layers["rough"]
    run(widget, qtbot)
    result = viewer.layers["coins refined (lite_medsam)"].data
    assert result.dtype == np.uint16 and sorted(np.unique(result)) == [0, 7, 12, 40]
    for coin_id, rough_id in ids.items():
        assert iou(result == rough_id, masks[coin_id]) > 0.85 > iou(rough == rough_id, masks[coin_id])
    assert_unchanged(viewer, before)


def test_cancel_mid_run_adds_and_changes_nothing(open_widget, points_model, coins, qtbot):
    image, _ = coins
    viewer, widget = open_widget(points_model)
    viewer.add_image(image, name="coins")
    viewer.add_labels(np.ones(image.shape, np.uint8), name="keep me")
    before = snapshot(viewer)
    widget.params["points_per_side"].value = 16
    widget.params["points_per_batch"].value = 4  # 64 batches
    start = len(notification_manager.records)
    widget.run()
    qtbot.waitUntil(lambda: widget._progress_state[0] > 0, timeout=120_000)  # a batch is done
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert [layer.name for layer in viewer.layers] == ["coins", "keep me"]
    assert_unchanged(viewer, before)
    assert widget.status.value.startswith("Cancelled")
    assert any("cancelled" in m for m in messages(start))
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_bad_inputs_become_notifications_and_create_nothing(open_widget, lite_medsam, qtbot):
    viewer, widget = open_widget(lite_medsam)
    start = len(notification_manager.records)
    assert widget.run() is None
    assert any("Add an image layer" in m for m in messages(start))
    viewer.add_image(np.zeros((60, 80), np.uint8), name="img")
    shapes = viewer.add_shapes(name="boxes")
    viewer.add_labels(np.zeros((60, 70), np.uint8), name="wrong size")
    before = snapshot(viewer)
    cases = [
        ("boxes", None, "The Shapes layer is empty"),
        ("boxes", lambda: shapes.add_polygons([np.array([[5, 5], [20, 30], [30, 8.0]])]), "not rectangles (polygon"),
        ("labels", None, "have shape (60, 70) but the image is (60, 80)"),
    ]
    for mode, change, text in cases:
        if change is not None:
            change()
            before = snapshot(viewer)
        widget.mode.value = mode
        start = len(notification_manager.records)
        assert widget.run() is None
        assert any(text in m for m in messages(start)), messages(start)
        assert text[:30] in widget.status.value
        assert len(viewer.layers) == 3 and not widget.running
        assert_unchanged(viewer, before)


# ----------------------------------------------------------------------- stacks


def test_stack_current_plane_only_or_all_planes_and_edges(open_widget, lite_medsam, coins, qtbot):
    image, masks = coins
    # three 96 x 128 planes, each with one whole reference coin (ids 5, 9, 20) -> one rectangle per plane
    corners = {}
    for coin_id in (5, 9, 20):
        rows, cols = np.nonzero(masks[coin_id])
        corners[coin_id] = (min(max(rows.min() - 25, 0), image.shape[0] - 96),
                            min(max(cols.min() - 30, 0), image.shape[1] - 128))
    planes = [(image[r:r + 96, c:c + 128], masks[k][r:r + 96, c:c + 128]) for k, (r, c) in corners.items()]
    stack = np.stack([p for p, _ in planes])
    assert all(m.sum() == masks[k].sum() for k, (_, m) in zip(corners, planes))  # whole coins
    viewer, widget = open_widget(lite_medsam)
    viewer.add_image(stack, name="stack")
    viewer.add_shapes([rectangle(m, lead=(z,)) for z, (_, m) in enumerate(planes)], shape_type="rectangle",
                      name="boxes", ndim=3)
    assert shown(widget.current_plane)
    before = snapshot(viewer)

    widget.mode.value = "boxes"
    viewer.dims.set_current_step(0, 1)
    widget.current_plane.value = True
    run(widget, qtbot)
    one = viewer.layers["stack boxes (lite_medsam)"].data
    assert one.shape == stack.shape and not one[[0, 2]].any()
    assert sorted(np.unique(one[1])) == [0, 2] and iou(one[1] == 2, planes[1][1]) > 0.85  # rectangle row 2

    widget.current_plane.value = False
    run(widget, qtbot)
    every = viewer.layers[-1].data
    assert viewer.layers[-1].name.startswith("stack boxes (lite_medsam)") and every.shape == stack.shape
    for z, (_, mask) in enumerate(planes):
        assert sorted(np.unique(every[z])) == [0, z + 1] and iou(every[z] == z + 1, mask) > 0.85
    np.testing.assert_array_equal(every[1], one[1])  # same plane, same result

    # the edge map of segment everything (box proposals) on the current plane only
    widget.mode.value = "edges"
    widget.current_plane.value = True
    viewer.dims.set_current_step(0, 2)
    run(widget, qtbot)
    edges = viewer.layers["stack edges (lite_medsam)"]
    assert edges.data.dtype == np.float32 and edges.data.shape == stack.shape
    assert edges.data[2].max() == pytest.approx(1.0) and not edges.data[:2].any()
    # strong edges on the coin's outline, none inside it
    from scipy import ndimage as ndi

    mask = planes[2][1]
    outline = ndi.binary_dilation(mask, iterations=2) & ~ndi.binary_erosion(mask, iterations=2)
    inside = ndi.binary_erosion(mask, iterations=4)
    assert edges.data[2][outline].mean() > 0.05 and edges.data[2][outline].mean() > 10 * edges.data[2][inside].mean()
    assert_unchanged(viewer, before)


def test_closing_the_viewer_mid_run_stops_the_job(make_napari_viewer, points_model, coins, qtbot):
    """Closing napari during a run used to abort the process (the job's thread outlived its Qt signals)."""
    from qtpy.QtCore import QThreadPool

    image, _ = coins
    viewer = make_napari_viewer()
    widget = AutomaticSegmentationWidget(viewer, model=points_model)
    viewer.window.add_dock_widget(widget, name="Automatic segmentation")
    viewer.add_image(image, name="coins")
    widget.params["points_per_side"].value = 16
    widget.params["points_per_batch"].value = 4  # 64 batches
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._progress_state[0] > 0, timeout=120_000)
    viewer.close()
    assert QThreadPool.globalInstance().activeThreadCount() == 0  # cancelled and waited for, within close()


def test_segment_everything_in_a_time_lapse_links_tracks(open_widget, lite_medsam, coins, qtbot):
    """Four frames of coins drifting 3 px per frame: every coin keeps its id, and a Tracks layer follows them."""
    image, masks = coins
    frames = np.stack([image[40 + 3 * t:40 + 3 * t + 120, 100 + 2 * t:100 + 2 * t + 160] for t in range(4)])
    viewer, widget = open_widget(lite_medsam)
    viewer.add_image(frames, name="movie")
    widget.mode.value = "everything"
    assert shown(widget.link)
    widget.link.value = "tracks"
    run(widget, qtbot, timeout=300_000)
    labels = viewer.layers["movie auto (lite_medsam)"].data
    tracks = viewer.layers["movie auto (lite_medsam) tracks"]
    ids = [i for i in np.unique(labels[0]) if i]
    assert len(ids) >= 3
    # a coin fully inside every frame is one id in every frame, at the position that drifted with it
    kept = [i for i in ids if all((labels[t] == i).sum() > 0.5 * (labels[0] == i).sum() for t in range(4))]
    assert len(kept) >= 0.6 * len(ids), (ids, kept)
    assert set(np.unique(tracks.data[:, 0]).astype(int)) == set(np.unique(labels)) - {0}
    assert "Tracks layer" in widget.status.value
