"""The napari annotator on real images in a real viewer (run under Xvfb: ``xvfb-run -a pytest``).

Prompts are added through the layers (as a mouse would), the preview and the committed
labels are compared with reference masks (scikit-image's classic watershed of the coins).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from napari.utils.notifications import notification_manager
from scipy import ndimage as ndi
from skimage import data as skdata
from skimage import filters, measure, segmentation

from napari_sam._widgets import AnnotatorWidget, _jobs
from napari_sam._widgets._sample_data import blobs_stack
from napari_sam.errors import SamkitError

pytestmark = pytest.mark.gui


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def points_model(lite_medsam):
    """LiteMedSAM's weights declared as a SAM-like model (points, three masks, mask input),
    to drive the click / ambiguity / refinement paths without downloading SAM."""
    model = copy.deepcopy(lite_medsam)
    model.spec = replace(
        model.spec, name="lite_medsam_points", prompt_types=("points", "boxes", "masks"), multimask=True
    )
    return model


@pytest.fixture(scope="module")
def coins_reference():
    """Coin masks from scikit-image's watershed tutorial: (image, label image, boxes row0,col0,row1,col1)."""
    coins = skdata.coins()
    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2
    foreground = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(coins), markers) - 1)
    labels = measure.label(foreground)
    regions = [r for r in measure.regionprops(labels) if r.area > 300]
    boxes = {r.label: np.array(r.bbox) + [-3, -3, 2, 2] for r in regions}
    return coins, labels, boxes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def rectangle(box, plane=None):
    """The 4 corners of a (row0, col0, row1, col1) box, optionally prefixed by plane indices."""
    r0, c0, r1, c1 = box
    corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)
    if plane is not None:
        corners = np.concatenate([np.full((4, len(plane)), plane, float), corners], axis=1)
    return corners


@pytest.fixture
def open_annotator(make_napari_viewer, qtbot):
    widgets = []

    def open_(image, model, **image_kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(image, **image_kwargs)
        widget = AnnotatorWidget(viewer, model=model)
        viewer.window.add_dock_widget(widget, name="Annotator")
        widget.wait_until_ready(timeout=300)
        widgets.append(widget)
        return viewer, widget

    yield open_
    for widget in widgets:  # no worker may outlive its viewer
        qtbot.waitUntil(lambda: not widget._jobs.busy and not widget.models.busy, timeout=300_000)


def new_notifications(since: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[since:]]


# ----------------------------------------------------------------------- 2D workflow


def test_box_preview_commit_multi_and_undo(open_annotator, lite_medsam, coins_reference):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam, name="coins")
    assert [layer.name for layer in viewer.layers] == ["coins", "SAM points", "SAM boxes", "SAM preview"]
    assert "boxes" in widget.controls.hint.value

    # one box drawn in the boxes layer -> preview at once (no waiting: the embedding exists)
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    widget.wait_until_ready()  # a slow decoder (a loaded machine) previews in a worker
    preview = widget.preview_layer.data
    assert iou(preview > 0, reference == 1) > 0.9
    assert "predicted IoU" in widget.controls.mask_info.value
    ids = widget.commit()
    labels = viewer.layers["SAM labels"]
    assert ids == [1]
    assert iou(labels.data == 1, reference == 1) > 0.9
    assert len(widget.boxes_layer.data) == 0 and not widget.preview_layer.data.any()  # prompts consumed

    # three boxes at once -> three objects in one commit, new ids, object 1 untouched
    before = labels.data.copy()
    widget.boxes_layer.add_rectangles([rectangle(boxes[k]) for k in (2, 3, 5)])
    widget.wait_until_ready()
    assert sorted(np.unique(widget.preview_layer.data)) == [0, 1, 2, 3]
    assert widget.controls.commit.text.endswith("[Shift+C]")
    widget.controls.commit.clicked.emit()  # the button
    assert sorted(np.unique(labels.data)) == [0, 1, 2, 3, 4]
    for new_id, ref_id in zip((2, 3, 4), (2, 3, 5)):
        assert iou(labels.data == new_id, reference == ref_id) > 0.9
    np.testing.assert_array_equal(labels.data[before > 0], before[before > 0])

    # undo removes the last commit only (one undo step), the first object stays
    widget.undo_commit()
    np.testing.assert_array_equal(labels.data, before)
    # clearing prompts never touches committed labels
    widget.boxes_layer.add_rectangles(rectangle(boxes[4]))
    widget.clear_prompts()
    assert len(widget.boxes_layer.data) == 0
    np.testing.assert_array_equal(labels.data, before)


def test_commit_modes_protect_existing_labels(open_annotator, lite_medsam, coins_reference):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam)
    painted = np.zeros(coins.shape, np.uint32)
    painted[reference == 1] = 7
    painted[boxes[1][0] + 5 : boxes[1][0] + 12, :] = 9  # a stripe through coin 1 and its neighbours
    labels = viewer.add_labels(painted.copy(), name="manual")
    widget.reset_choices()
    widget.controls.labels.value = labels
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    assert widget.commit("keep") == []  # touches label 7: not written, prompt kept
    np.testing.assert_array_equal(labels.data, painted)
    assert len(widget.boxes_layer.data) == 1
    assert widget.commit() == [10]  # default: only fill background
    assert (labels.data[painted > 0] == painted[painted > 0]).all()
    widget.undo_commit()
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    assert widget.commit("overwrite") == [10]
    assert iou(labels.data == 10, reference == 1) > 0.9

    # new pixels in the image layer: a new embedding (the old one stays cached)
    first = widget.predictor.embedding
    widget.image_layer.data = coins[::-1].copy()
    assert not widget.ready
    widget.wait_until_ready(timeout=300)
    planes = [key for key in widget.cache.keys() if key.window is None]  # (zoomed windows are cached too)
    assert widget.predictor.embedding is not first and len(planes) == 2


def test_points_toggle_ambiguity_and_refinement(open_annotator, points_model, coins_reference):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, points_model)
    assert viewer.layers.selection.active is widget.points_layer and widget.points_layer.mode == "add"
    centre = np.array(measure.regionprops((reference == 14).astype(int))[0].centroid)
    widget.points_layer.add(centre)
    widget.wait_until_ready()
    assert widget.choice.n_candidates == 3
    shown = widget.choice.indices()[0]
    assert shown == int(np.argmax(widget._predictions[0].iou_scores))
    np.testing.assert_array_equal(widget.preview_masks[0], widget._predictions[0].masks[shown])
    viewer.window._qt_viewer._key_map_handler.press_key("N")  # cycle whole / part / subpart
    assert widget.choice.indices()[0] == (shown + 1) % 3
    np.testing.assert_array_equal(widget.preview_masks[0], widget._predictions[0].masks[(shown + 1) % 3])

    # T toggles the next point to negative (red); the previous logits refine the object
    viewer.layers.selection.active = widget.points_layer  # the points layer carries the binding
    viewer.window._qt_viewer._key_map_handler.press_key("T")
    assert widget.controls.point_label.text.startswith("Next click: negative")
    calls = []
    widget.last_preview_seconds = 0.0  # on the GUI thread, where the spy below can see it
    predict = widget.predictor.predict_regions
    widget.predictor.predict_regions = lambda **kw: calls.append(kw) or predict(**kw)
    widget.points_layer.add(centre + [60, 0])
    widget.wait_until_ready()
    assert widget.points_layer.features["label"].tolist() == ["positive", "negative"]
    np.testing.assert_allclose(widget.points_layer.face_color[1], [1.0, 0.2, 0.2, 1.0])
    assert calls[-1]["mask_input"] is not None and calls[-1]["multimask"] is False
    assert widget.choice.n_candidates == 1


def test_clicks_with_the_default_model_preview_and_cycle_three_masks(open_annotator, lite_medsam, coins_reference):
    """LiteMedSAM was trained on boxes: a click becomes box prompts, N cycles small / medium / large."""
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam)
    assert viewer.layers.selection.active is widget.points_layer and widget.points_layer.mode == "add"
    assert "click" in widget.controls.hint.value
    assert not widget.controls.next_mask.native.isHidden()
    coin = reference == 14
    distance = ndi.distance_transform_edt(coin)
    centre = np.unravel_index(int(np.argmax(distance)), coin.shape)  # (row, col), as a mouse click
    widget.points_layer.add(centre)
    widget.wait_until_ready()
    assert iou(widget.preview_layer.data > 0, coin) > 0.85  # the best mask first
    n = widget.choice.n_candidates
    assert n >= 2, widget._predictions[0].iou_scores
    shown = [widget.preview_masks[0].copy()]
    for _ in range(n - 1):
        viewer.window._qt_viewer._key_map_handler.press_key("N")
        shown.append(widget.preview_masks[0].copy())
    assert all(iou(a, b) < 0.9 for i, a in enumerate(shown) for b in shown[i + 1:])  # distinct masks
    widget.controls.next_mask.clicked.emit()  # the button: back to the best
    assert iou(widget.preview_masks[0], shown[0]) == 1.0 and "mask" in widget.controls.mask_info.value
    assert widget.commit() == [1]
    assert iou(viewer.layers["SAM labels"].data == 1, coin) > 0.85


@dataclass
class _Mouse:
    """A mouse event as napari's layer callbacks read it."""

    type: str
    position: tuple
    modifiers: tuple = ()
    button: int = 1
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    dims_displayed: tuple = (0, 1)
    view_direction: object = None
    is_dragging: bool = False
    handled: bool = False


def test_ctrl_click_adds_negative_point(open_annotator, points_model, qtbot):
    viewer, widget = open_annotator(skdata.coins(), points_model)
    layer = widget.points_layer
    for modifiers in ((), ("Control",)):
        press = _Mouse("mouse_press", (100.0, 120.0), modifiers)
        mouse_press_callbacks(layer, press)
        mouse_release_callbacks(layer, _Mouse("mouse_release", (100.0, 120.0), modifiers))
        qtbot.wait(10)
    assert layer.features["label"].tolist() == ["positive", "negative"]
    assert widget.controls.point_label.text.startswith("Next click: positive")  # a click does not toggle


def test_slow_previews_run_in_a_worker_and_stay_consistent(open_annotator, lite_medsam, coins_reference, monkeypatch):
    from napari_sam._widgets import annotator

    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam)
    monkeypatch.setattr(annotator, "SYNC_PREVIEW_SECONDS", 0.0)  # as if the decoder were slow
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    widget.boxes_layer.add_rectangles(rectangle(boxes[2]))  # supersedes the first request
    assert widget._previews.busy and not widget.preview_layer.data.any()  # the GUI did not wait
    widget.wait_until_ready()
    assert sorted(np.unique(widget.preview_layer.data)) == [0, 1, 2]
    assert iou(widget.preview_masks[1], reference == 2) > 0.9
    widget.boxes_layer.add_rectangles(rectangle(boxes[3]))
    assert widget.commit() == [1, 2, 3]  # commit never uses a stale preview
    labels = viewer.layers["SAM labels"].data
    assert iou(labels == 3, reference == 3) > 0.9


def test_rgb_and_channels_first_images(open_annotator, lite_medsam, coins_reference, qtbot):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(np.stack([coins] * 3, axis=-1), lite_medsam, name="rgb")  # H x W x 3
    assert viewer.layers["rgb"].rgb and widget.boxes_layer.ndim == 2
    widget.add_boxes(boxes[2])
    assert widget.commit() == [1]
    assert iou(viewer.layers["SAM labels"].data == 1, reference == 2) > 0.9

    channels = np.stack([coins, np.zeros_like(coins), coins])  # C x H x W, shown with a C slider
    viewer.add_image(channels, name="channels")
    widget.set_image_layer("channels")
    assert not widget.controls.channels_first.native.isHidden() and widget.boxes_layer.ndim == 3
    widget.controls.channels_first.value = True  # the first axis holds channels
    widget.wait_until_ready(timeout=300)
    assert widget.boxes_layer.ndim == 2 and widget.preview_layer.data.shape == coins.shape
    assert [layer.name for layer in viewer.layers].count("SAM boxes") == 1  # the 3D prompt layers were replaced
    widget.add_boxes(boxes[3])
    widget.controls.labels.value = "new layer"
    widget.commit()
    target = widget.labels_layer
    assert target.data.shape == coins.shape and iou(target.data == 1, reference == 3) > 0.9

    # closing the dock widget detaches it from the viewer: keys and events do nothing any more
    viewer.window.remove_dock_widget("all")
    qtbot.wait(50)
    before = target.data.copy()
    widget.add_boxes(boxes[4])
    viewer.window._qt_viewer._key_map_handler.press_key("Shift-C")
    viewer.dims.set_current_step(0, 1)
    np.testing.assert_array_equal(target.data, before)


# ----------------------------------------------------------------------- stacks


def test_stack_planes_cache_and_label_volume(open_annotator, lite_medsam, qtbot):
    stack = blobs_stack()[0][0]  # 24 x 192 x 192
    viewer, widget = open_annotator(stack, lite_medsam)
    viewer.dims.set_current_step(0, 5)
    widget.wait_until_ready(timeout=300)
    truth = measure.label(stack[5] > 120)
    region = max(measure.regionprops(truth), key=lambda r: r.area)
    box = np.array(region.bbox) + [-3, -3, 3, 3]
    widget.boxes_layer.add_rectangles(rectangle(box, plane=[5]))
    widget.wait_until_ready()
    assert np.asarray(widget.preview_layer.translate)[0] == 5 and widget.preview_layer.data.shape == (1, 192, 192)
    assert widget.commit() == [1]
    labels = viewer.layers["SAM labels"]
    assert labels.data.shape == stack.shape
    assert np.flatnonzero(labels.data.reshape(24, -1).any(axis=1)).tolist() == [5]
    assert iou(labels.data[5] == 1, truth == region.label) > 0.8

    # another plane: recomputed in the background, the superseded request is cached but not applied
    viewer.dims.set_current_step(0, 9)
    viewer.dims.set_current_step(0, 12)
    assert not widget.ready
    widget.wait_until_ready(timeout=300)
    qtbot.waitUntil(lambda: not widget._jobs.busy, timeout=300_000)
    assert widget._ready_key.plane == (12,)
    assert widget.predictor.embedding is widget.cache.get(widget._ready_key)
    truth12 = measure.label(stack[12] > 120)
    region = max(measure.regionprops(truth12), key=lambda r: r.area)
    widget.add_boxes(np.array(region.bbox) + [-3, -3, 3, 3])  # (row0, col0, row1, col1) on this plane
    assert widget.commit() == [2]
    assert np.flatnonzero(labels.data.reshape(24, -1).any(axis=1)).tolist() == [5, 12]
    assert iou(labels.data[12] == 2, truth12 == region.label) > 0.8

    # back to plane 5: the embedding comes from the cache at once
    viewer.dims.set_current_step(0, 5)
    assert widget.ready and widget._ready_key.plane == (5,)
    assert len(widget.cache) >= 3


# ----------------------------------------------------------------------- errors


def test_bad_inputs_become_notifications(make_napari_viewer, lite_medsam, tmp_path, monkeypatch, qtbot):
    viewer = make_napari_viewer()
    widget = AnnotatorWidget(viewer, model=lite_medsam)
    viewer.window.add_dock_widget(widget)
    start = len(notification_manager.records)
    assert "Add an image layer" in widget.controls.status.value and widget.image_layer is None
    widget.controls.commit.clicked.emit()  # no image
    assert any("Select an image layer" in m for m in new_notifications(start))

    viewer.add_image(skdata.coins(), name="coins")  # the first image is picked up
    widget.wait_until_ready(timeout=300)
    start = len(notification_manager.records)
    widget.controls.commit.clicked.emit()  # no prompt
    assert any("Nothing to commit" in m for m in new_notifications(start))

    widget.points_layer.add([100, 100])  # a click with the box-only default: a preview, no notice
    widget.wait_until_ready()
    assert widget.preview_layer.data.any() and not any("trained on boxes" in m for m in new_notifications(start))
    widget.clear_prompts()

    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    start = len(notification_manager.records)
    widget.set_model(str(bad))
    qtbot.waitUntil(lambda: not widget.models.busy, timeout=60_000)
    messages = new_notifications(start)
    assert any("not a readable PyTorch checkpoint" in m and "Still using lite_medsam" in m for m in messages)
    assert widget.predictor.spec.name == "lite_medsam" and widget.ready

    start = len(notification_manager.records)
    viewer.dims.ndisplay = 3
    assert any("switch the viewer to 2D" in m for m in new_notifications(start))
    viewer.dims.ndisplay = 2

    def out_of_memory(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: not enough memory: out of memory")

    monkeypatch.setattr(_jobs, "_embed", out_of_memory)
    start = len(notification_manager.records)
    viewer.add_image(np.random.default_rng(0).random((64, 80)), name="noise")
    assert widget.image_layer.name == "coins"  # a new layer does not steal the annotator
    widget.set_image_layer("noise")
    with pytest.raises(SamkitError, match="Out of memory"):
        widget.wait_until_ready(timeout=60)
    assert any("Out of memory" in m and "lite_medsam" in m for m in new_notifications(start))

    monkeypatch.undo()
    start = len(notification_manager.records)
    viewer.add_image(np.zeros((1, 50), np.uint8), name="line")  # not an image to segment
    widget.controls.image.value = viewer.layers["line"]  # as picked in the widget
    with pytest.raises(SamkitError, match="too small"):
        widget.wait_until_ready(timeout=60)
    assert any("too small to segment" in m for m in new_notifications(start))
    assert not widget._jobs.busy and not widget.models.busy


# ----------------------------------------------------------------------- as a plugin


def test_plugin_menu_opens_the_annotator_on_the_sample(make_napari_viewer):
    """What a new user does: File > Open Sample > Coins, Plugins > Annotator, draw a box, commit."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-samkit", "coins")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-samkit", "Annotator")
    assert isinstance(widget, AnnotatorWidget)
    widget.wait_until_ready(timeout=300)  # loads the embedded default model by name
    assert widget.predictor.spec.name == "lite_medsam" and widget.image_layer.name == "coins"
    widget.add_boxes([13, 302, 74, 367])
    assert widget.commit() == [1]
    # one coin: 2,604 pixels in the watershed reference
    assert 2000 < (viewer.layers["SAM labels"].data == 1).sum() < 3500


CLOSE_AFTER_A_STACK = """
import napari, numpy as np
from napari_sam._widgets import AnnotatorWidget
viewer = napari.Viewer(show=False)
rng = np.random.default_rng(0)
viewer.add_image(rng.random((6, 96, 96), dtype=np.float32), name="stack")
widget = AnnotatorWidget(viewer)
viewer.window.add_dock_widget(widget, name="Annotator")
widget.wait_until_ready(timeout=300)
viewer.close()
print("closed")
"""


def test_closing_the_viewer_after_a_stack_session_exits_cleanly(tmp_path):
    """Closing removed the layers one by one, the plane count changed, the annotator started an
    embedding job, and the process aborted at exit (134: the job outlived its Qt signals)."""
    import subprocess
    import sys

    script = tmp_path / "close_after_a_stack.py"
    script.write_text(CLOSE_AFTER_A_STACK)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "closed" in done.stdout and "Traceback" not in done.stderr


# ----------------------------------------------------------------------- found by driving the widget


def test_undo_brings_the_prompts_back_and_says_when_nothing_is_left(open_annotator, lite_medsam, coins_reference):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam, name="coins")
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    widget.wait_until_ready()
    assert widget.commit() == [1]
    assert len(widget.boxes_layer.data) == 0  # the prompt was consumed
    widget.undo_commit()
    assert not viewer.layers["SAM labels"].data.any()
    assert len(widget.boxes_layer.data) == 1  # ... and is back: commit again without redrawing
    widget.wait_until_ready()
    assert iou(widget.preview_layer.data > 0, reference == 1) > 0.9
    assert widget.commit() == [1]
    widget.undo_commit()
    with pytest.raises(SamkitError, match="Nothing to undo"):
        widget.undo_commit()


def test_each_image_commits_into_its_own_labels(open_annotator, lite_medsam, coins_reference):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam, name="first")
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    widget.wait_until_ready()
    widget.commit()
    first_labels = widget.labels_layer
    second = viewer.add_image(coins.copy(), name="second")  # same shape
    widget.set_image_layer(second)
    widget.wait_until_ready(timeout=300)
    assert widget.labels_layer is None  # 'new layer', not the first image's labels
    widget.boxes_layer.add_rectangles(rectangle(boxes[2]))
    widget.wait_until_ready()
    widget.commit()
    assert widget.labels_layer is not first_labels
    assert sorted(np.unique(first_labels.data)) == [0, 1]  # untouched by the second image's commit
    widget.set_image_layer("first")
    widget.wait_until_ready(timeout=300)
    assert widget.labels_layer is first_labels  # back on the first image: its own labels again


def test_toggling_the_next_label_leaves_existing_points_as_they_are(open_annotator, points_model, coins_reference):
    coins, reference, _ = coins_reference
    viewer, widget = open_annotator(coins, points_model)
    centre = np.array(measure.regionprops((reference == 14).astype(int))[0].centroid)
    viewer.layers.selection.active = widget.points_layer
    keys = viewer.window._qt_viewer._key_map_handler
    keys.press_key("T")  # next: negative
    widget.points_layer.add(centre)
    keys.press_key("T")  # next: positive again; the red point must stay red and negative
    assert widget.points_layer.features["label"].tolist() == ["negative"]
    np.testing.assert_allclose(widget.points_layer.face_color[0], [1.0, 0.2, 0.2, 1.0])
    widget.wait_until_ready()


def test_deleted_prompt_layers_are_made_again_and_nothing_of_them_is_committed(open_annotator, lite_medsam,
                                                                                coins_reference, qtbot):
    coins, reference, boxes = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam, name="coins")
    widget.boxes_layer.add_rectangles(rectangle(boxes[1]))
    widget.wait_until_ready()
    assert widget.preview_masks.any()
    viewer.layers.remove(widget.boxes_layer)
    assert not widget.preview_masks.any()
    with pytest.raises(SamkitError, match="Nothing to commit"):
        widget.commit()  # the deleted box's object is not written
    qtbot.waitUntil(lambda: widget.boxes_layer in viewer.layers, timeout=10_000)
    widget.boxes_layer.add_rectangles(rectangle(boxes[2]))  # new boxes go to a layer of the viewer
    widget.wait_until_ready()
    assert iou(widget.preview_layer.data > 0, reference == 2) > 0.9
    assert widget.commit() == [1]


def test_box_outlines_stay_a_few_screen_pixels_wide_at_any_zoom(open_annotator, lite_medsam):
    """On a 4000 x 4000 image the outlines were 13 data pixels wide and hid small objects."""
    from napari_sam._widgets._layers import BOX_EDGE_SCREEN_PX, camera

    viewer, widget = open_annotator(np.zeros((4000, 4000), np.uint8), lite_medsam)
    widget.boxes_layer.add_rectangles(rectangle((100, 100, 140, 150)))
    for zoom in (0.1, 1.0, 8.0):
        camera(viewer).zoom = zoom
        width = widget.boxes_layer.edge_width[0]
        assert width * zoom == pytest.approx(BOX_EDGE_SCREEN_PX)  # screen pixels
        assert widget.boxes_layer.current_edge_width == pytest.approx(width)


def test_labels_placed_elsewhere_are_not_offered_as_commit_targets(open_annotator, lite_medsam, coins_reference):
    """A Labels layer of the image's shape but translated by (50, 50) was offered, and objects landed 50 px off."""
    coins, _, _ = coins_reference
    viewer, widget = open_annotator(coins, lite_medsam, name="coins")
    aligned = viewer.add_labels(np.zeros(coins.shape, np.uint16), name="aligned")
    viewer.add_labels(np.zeros(coins.shape, np.uint16), name="shifted", translate=(50, 50))
    viewer.add_labels(np.zeros(coins.shape, np.uint16), name="scaled", scale=(2, 2))
    viewer.add_labels(np.zeros(coins.shape, np.uint16), name="rotated", rotate=30)
    offered = [name for name, _ in widget._labels_choices()]
    assert "aligned" in offered and not {"shifted", "scaled", "rotated"} & set(offered)
    assert widget.controls.labels.choices.count(aligned) == 1
