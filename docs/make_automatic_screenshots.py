"""Screenshots of the automatic segmentation widget for docs/automatic.md.

Run (a display is needed; headless: ``xvfb-run -a``)::

    xvfb-run -a python docs/make_automatic_screenshots.py

Writes ``docs/images/automatic_everything.png`` (segment everything on the coins
with the default LiteMedSAM) and ``docs/images/automatic_refine_boxes.png``
(three rectangles of a Shapes layer refined into labels 1-3).
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication
from skimage import data

from napari_sam._widgets.automatic import AutomaticSegmentationWidget

IMAGES = Path(__file__).resolve().parent / "images"


def wait(widget: AutomaticSegmentationWidget, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while widget.running:
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish")
        QApplication.processEvents()
        time.sleep(0.02)
    QApplication.processEvents()


def open_viewer():
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 900)
    viewer.add_image(data.coins(), name="coins")
    _, widget = viewer.window.add_plugin_dock_widget("napari-samkit", "Automatic segmentation")
    return viewer, widget


def shoot(viewer, name: str) -> Path:
    QApplication.processEvents()
    viewer.reset_view()
    QApplication.processEvents()
    path = IMAGES / name
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")
    return path


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    viewer, widget = open_viewer()
    widget.mode.value = "everything"
    widget.run()
    wait(widget)
    viewer.layers["coins auto (lite_medsam)"].opacity = 0.6
    shoot(viewer, "automatic_everything.png")
    viewer.close()

    viewer, widget = open_viewer()
    boxes = [(33, 19, 77, 70), (102, 182, 148, 230), (238, 272, 291, 330)]  # row0, col0, row1, col1
    viewer.add_shapes([np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float) for r0, c0, r1, c1 in boxes],
                      shape_type="rectangle", name="my boxes", edge_color="yellow", face_color="transparent",
                      edge_width=2)
    widget.mode.value = "boxes"
    widget.run()
    wait(widget)
    viewer.layers.selection.active = viewer.layers["my boxes"]
    shoot(viewer, "automatic_refine_boxes.png")
    viewer.close()


if __name__ == "__main__":
    main()
