"""Regenerate the annotator screenshots in docs/images/ from a real napari viewer.

Run from the repository root (needs a display; on a headless machine use Xvfb):

    xvfb-run -a python docs/make_screenshots.py

It drives the widget the way docs/annotator.md describes (box a coin, commit, three
boxes at once, commit, a plane of a 3D stack) and saves the whole window after each step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parent / "images"
WINDOW_SIZE = (1500, 900)

# Coin boxes (row0, col0, row1, col1) around skimage.data.coins() objects.
FIRST_COIN = (13, 302, 74, 367)
THREE_COINS = [(25, 129, 76, 181), (27, 189, 75, 242), (32, 19, 76, 69)]


def settle(seconds: float = 0.3) -> None:
    """Let Qt and vispy draw."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def shoot(viewer, name: str) -> None:
    settle(0.8)
    path = IMAGES / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"wrote {path.relative_to(IMAGES.parent.parent)}")


def open_viewer(image, name: str, **kwargs):
    import napari

    from napari_sam._widgets import AnnotatorWidget

    viewer = napari.Viewer(show=True, title="napari-samkit annotator")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    viewer.add_image(image, name=name, **kwargs)
    widget = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotator", area="right")
    widget.wait_until_ready(timeout=600)
    settle(1.0)
    viewer.reset_view()
    return viewer, widget


def coins_workflow() -> None:
    from skimage import data

    viewer, widget = open_viewer(data.coins(), "coins")
    shoot(viewer, "annotator_open.png")

    widget.add_boxes(FIRST_COIN)  # what dragging a rectangle in 'SAM boxes' does
    shoot(viewer, "annotator_box_preview.png")
    widget.commit()

    widget.add_boxes(THREE_COINS)
    shoot(viewer, "annotator_three_boxes.png")
    widget.commit()
    viewer.layers.selection.active = viewer.layers["SAM labels"]
    shoot(viewer, "annotator_committed.png")
    viewer.close()


def round_blobs(plane: np.ndarray, count: int) -> list[np.ndarray]:
    """Boxes (row0, col0, row1, col1) around the largest round blobs of a plane."""
    from skimage import measure

    regions = [r for r in measure.regionprops(measure.label(plane > 120)) if r.eccentricity < 0.7 and r.area > 150]
    regions.sort(key=lambda r: -r.area)
    return [np.array(r.bbox) + [-3, -3, 3, 3] for r in regions[:count]]


def stack_workflow() -> None:
    from napari_sam._widgets._sample_data import blobs_stack

    stack = blobs_stack()[0][0]
    viewer, widget = open_viewer(stack, "blobs stack")
    viewer.dims.set_current_step(0, 12)
    widget.wait_until_ready(timeout=600)
    widget.add_boxes(round_blobs(stack[12], 3))
    widget.commit()
    viewer.dims.set_current_step(0, 16)
    widget.wait_until_ready(timeout=600)
    widget.add_boxes(round_blobs(stack[16], 1))
    shoot(viewer, "annotator_stack.png")
    viewer.close()


def main() -> int:
    from qtpy.QtCore import QThreadPool

    IMAGES.mkdir(parents=True, exist_ok=True)
    coins_workflow()
    stack_workflow()
    QThreadPool.globalInstance().waitForDone(60_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
