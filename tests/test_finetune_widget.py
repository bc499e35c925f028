"""The Fine-tune dock widget in a real viewer: layers in, a trained model out, selected in the annotator."""

from __future__ import annotations

import numpy as np
import pytest
from test_training import synthetic_cells

pytestmark = pytest.mark.gui


def viewer_with_cells(make_napari_viewer, n: int = 6):
    """A viewer with two synthetic cell images, each with its Labels layer."""
    viewer = make_napari_viewer()
    for seed in range(2):
        image, labels = synthetic_cells(seed, n=n)
        viewer.add_image(image, name=f"cells {seed}")
        viewer.add_labels(labels, name=f"cells {seed} labels")
    return viewer


def test_fine_tune_from_layers_selects_the_new_model_in_the_annotator(make_napari_viewer, qtbot, tmp_path,
                                                                       monkeypatch):
    from napari_sam._widgets.annotator import AnnotatorWidget
    from napari_sam._widgets.finetune import FineTuneWidget

    monkeypatch.setenv("NAPARI_SAMKIT_MODELS", str(tmp_path / "models"))
    viewer = viewer_with_cells(make_napari_viewer)
    viewer.add_labels(np.zeros((128, 128), np.uint16), name="empty labels")
    annotator = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(annotator, name="Annotator")
    annotator.wait_until_ready(timeout=300)
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    # Annotated pairs are preselected; an empty Labels layer is not.
    chosen = {(image.name, labels.name) for image, labels in widget.pairs.value}
    assert chosen == {("cells 0", "cells 0 labels"), ("cells 1", "cells 1 labels")}
    assert widget.name.value == "my-lab-v1"
    widget.settings["epochs"].value = 1
    widget.settings["zoom"].value = False
    worker = widget.start()
    assert worker is not None and widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=600_000)
    result = widget.result
    assert result is not None and result.name == "my-lab-v1", widget.status.value
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert result.checkpoint.is_file()
    assert "Saved model 'my-lab-v1'" in widget.status.value
    assert len(widget.chart.series("box_iou")) == 2
    assert widget.name.value == "my-lab-v2"  # ready for the next round
    qtbot.waitUntil(lambda: annotator.predictor is not None and annotator.predictor.spec.name == "my-lab-v1",
                    timeout=120_000)
    assert annotator.predictor.spec.supports_points
    annotator.wait_until_ready(timeout=300)  # no embedding job may outlive the viewer


def test_bad_names_are_refused_before_any_work(make_napari_viewer, tmp_path, monkeypatch):
    from napari_sam._widgets.finetune import FineTuneWidget

    monkeypatch.setenv("NAPARI_SAMKIT_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer)
    assert widget.start() is None  # nothing annotated
    assert "Nothing to learn from" in widget.status.value
    image, labels = synthetic_cells(0, n=3)
    viewer.add_image(image)
    viewer.add_labels(labels)
    widget.name.value = "vit_b"
    assert widget.start() is None and "built-in" in widget.status.value


def test_closing_the_viewer_mid_run_stops_the_job_and_keeps_the_best_epoch(make_napari_viewer, qtbot, tmp_path,
                                                                           monkeypatch):
    """Closing napari during training used to abort the process (the job's thread outlived its Qt signals)."""
    from qtpy.QtCore import QThreadPool

    from napari_sam._widgets.finetune import FineTuneWidget
    from napari_sam.user_models import checkpoint_path

    monkeypatch.setenv("NAPARI_SAMKIT_MODELS", str(tmp_path / "models"))
    viewer = viewer_with_cells(make_napari_viewer)
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.settings["epochs"].value = 50
    widget.settings["zoom"].value = False
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget._latest is not None and widget._latest.stage == "training", timeout=600_000)
    viewer.close()
    assert QThreadPool.globalInstance().activeThreadCount() == 0  # stopped and waited for, within close()
    assert checkpoint_path("my-lab-v1").is_file()  # the cancelled run saved its best epoch
