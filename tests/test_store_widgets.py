"""The widgets' store setting in a real viewer (run under Xvfb): embeddings written there are reused.

The model is LiteMedSAM with the counting stand-in image encoder of test_store.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_store import fast_model, stack  # noqa: F401 - fast_model is a fixture

from napari_sam._widgets import AnnotatorWidget
from napari_sam._widgets.automatic import AutomaticSegmentationWidget
from napari_sam.store import EmbeddingStore, is_store

pytestmark = pytest.mark.gui


def _stores(folder):
    return [p for p in folder.iterdir() if is_store(p)]


def test_annotator_keeps_and_reuses_plane_embeddings_in_the_store(make_napari_viewer, fast_model, qtbot, tmp_path):
    volume = stack(3)
    widgets = []
    for _ in range(2):
        viewer = make_napari_viewer()
        viewer.add_image(volume, name="blobs")
        viewer.dims.set_current_step(0, 0)
        widget = AnnotatorWidget(viewer, model=fast_model)
        viewer.window.add_dock_widget(widget, name="Annotator")
        widgets.append(widget)
        widget.wait_until_ready(timeout=300)
        widget.controls.store.value = tmp_path  # the plane on screen goes to the store at once
        for plane in (1, 2, 0):
            viewer.dims.set_current_step(0, plane)
            widget.wait_until_ready(timeout=300)
    # first annotator: 3 planes computed and stored; second: plane 0 computed before the setting
    # (memory only), planes 1 and 2 read from the store
    assert fast_model.image_encoder.calls == 4
    (path,) = _stores(tmp_path)
    assert path.name.startswith("blobs-lite_medsam-") and len(EmbeddingStore(path)) == 3
    assert widgets[1].predictor.embedding.key.plane == (0,)
    # a box on a small blob is answered from a zoomed window: one more encoder run, kept in the store
    widget = widgets[1]
    corners = np.array([[0, 40, 50], [0, 40, 60], [0, 50, 60], [0, 50, 50]], float)
    widget.boxes_layer.add_rectangles(corners)
    widget.wait_until_ready(timeout=300)
    widget.update_preview()
    assert fast_model.image_encoder.calls == 5
    windows = [name for name in EmbeddingStore(path).entry_names() if "window-" in name]
    assert len(windows) == 1 and windows[0].startswith("plane-0_")
    widget.boxes_layer.add_rectangles(corners + [0, 2, 2])  # a neighbour in the same window: decoder only
    widget.update_preview()
    assert fast_model.image_encoder.calls == 5
    for widget in widgets:
        qtbot.waitUntil(lambda w=widget: not w._jobs.busy and not w.models.busy, timeout=300_000)


def test_automatic_widget_run_twice_reads_the_store(make_napari_viewer, fast_model, qtbot, tmp_path):
    volume = stack(2)
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="blobs")
    widget = AutomaticSegmentationWidget(viewer, model=fast_model)
    viewer.window.add_dock_widget(widget, name="Automatic segmentation")
    widget.store.value = tmp_path
    results = []
    for _ in range(2):
        worker = widget.run()
        assert worker is not None, widget.status.value
        qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
        results.append(np.asarray(viewer.layers[-1].data).copy())
        if len(results) == 1:
            calls = fast_model.image_encoder.calls
    assert calls >= 2  # at least one window per plane
    assert fast_model.image_encoder.calls == calls  # the second run computed nothing
    np.testing.assert_array_equal(results[0], results[1])
    (path,) = _stores(tmp_path)
    assert len(EmbeddingStore(path)) == calls
