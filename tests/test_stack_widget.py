"""Segment through a stack in a real viewer (Xvfb): box on one plane, one key, the object in 3D, commit, undo."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._widgets import AnnotatorWidget
from napari_sam.errors import SamkitError

pytestmark = pytest.mark.gui


def disk(shape, centre, radius) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def blob_volume():
    """14 x 96 x 96: a bright disk that moves and grows on planes 3-10 (and a second one on planes 0-4)."""
    truth = np.zeros((14, 96, 96), np.uint8)
    for k in range(3, 11):
        truth[k][disk((96, 96), (40, 30 + k), 7 + k / 2)] = 1
    for k in range(0, 5):
        truth[k][disk((96, 96), (80, 80), 8)] = 2
    rng = np.random.default_rng(1)
    image = ((truth > 0) * 150 + 40 + rng.normal(0, 8, truth.shape)).clip(0, 255).astype(np.uint8)
    return image, truth


def box_of(mask):
    rows, cols = np.nonzero(mask)
    return np.array([rows.min() - 2, cols.min() - 2, rows.max() + 2, cols.max() + 2])


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_segment_through_stack_preview_correct_commit_undo(make_napari_viewer, lite_medsam, qtbot, blob_volume):
    image, truth = blob_volume
    viewer = make_napari_viewer()
    viewer.add_image(image, name="volume")
    widget = AnnotatorWidget(viewer, model=lite_medsam)
    viewer.window.add_dock_widget(widget, name="Annotator")
    widget.wait_until_ready(timeout=300)
    tools = widget.stack_tools
    assert not tools.section.native.isHidden() and tools.axis_choice.value == 0

    with pytest.raises(SamkitError, match="Nothing to segment through the stack"):
        widget.segment_through_stack()
    viewer.dims.set_current_step(0, 6)
    widget.wait_until_ready(timeout=300)
    widget.add_boxes(box_of(truth[6] == 1))
    widget.wait_until_ready()
    # on pure noise past the blob LiteMedSAM still answers at predicted IoU 0.64-0.76: stop there
    tools.settings["min_iou"].value = 0.8
    widget.segment_through_stack()
    tools.wait()
    assert tools.has_result and len(tools.objects) == 1
    preview = viewer.layers["SAM stack preview"].data
    assert preview.shape == truth.shape
    planes = np.flatnonzero(preview.reshape(14, -1).any(1)).tolist()
    assert planes[0] in (2, 3, 4) and planes[-1] in (9, 10, 11), planes
    assert iou(preview == 1, truth == 1) > 0.8
    assert len(widget.boxes_layer.data) == 0  # the prompt became the stack preview

    # correction from plane 8: only planes after it are propagated again
    before = {k: tools.objects[0].masks[k] for k in tools.objects[0].planes if k <= 8}
    viewer.dims.set_current_step(0, 8)
    widget.wait_until_ready(timeout=300)
    widget.add_boxes(box_of(truth[8] == 1))
    widget.wait_until_ready()
    widget.segment_through_stack()
    tools.wait()
    assert len(tools.objects) == 1
    for k in before:
        if k < 8:
            assert tools.objects[0].masks[k] is before[k]  # untouched below the corrected plane

    # commit: one id on every plane, one undo step
    ids = widget.commit()
    assert ids == [1] and not tools.has_result and "SAM stack preview" not in viewer.layers
    labels = viewer.layers["SAM labels"]
    assert np.flatnonzero((labels.data == 1).reshape(14, -1).any(1)).tolist() == planes
    assert iou(labels.data == 1, truth == 1) > 0.8
    widget.undo_commit()
    assert not labels.data.any()

    # from a committed label: the second blob committed on plane 2, then extended through the stack
    labels.data[2][truth[2] == 2] = 5
    labels.refresh()
    labels.selected_label = 5
    viewer.dims.set_current_step(0, 2)
    widget.wait_until_ready(timeout=300)
    widget.segment_through_stack()
    tools.wait()
    assert widget.commit() == [5]
    assert np.flatnonzero((labels.data == 5).reshape(14, -1).any(1)).tolist() in ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5])
