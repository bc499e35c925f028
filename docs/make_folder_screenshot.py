"""Screenshot of the automatic widget's Folder section mid-run (docs/images/automatic_folder.png), and a check
that closing napari while a folder runs exits cleanly. Run under Xvfb: python docs/make_folder_screenshot.py OUT.png
(inputs: a few images in /tmp/shot_in)."""
import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_sam._widgets.automatic import AutomaticSegmentationWidget

viewer = napari.Viewer(show=True)
w = AutomaticSegmentationWidget(viewer)
viewer.window.add_dock_widget(w, name="Automatic segmentation")
w.folder.input.value = Path("/tmp/shot_in")
w.folder.output.value = Path("/tmp/shot_out")
w.folder.run()
app = QApplication.instance()
t = time.time()


def pump(seconds: float) -> None:
    """Let Qt draw for a while."""
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.05)


while time.time() - t < 60 and not (w.folder._state[0] >= 1):
    pump(0.05)
pump(1.0)
viewer.window._qt_window.resize(1500, 1150)
pump(0.5)
viewer.screenshot(sys.argv[1], canvas_only=False)
print("state", w.folder._state, w.folder.running, flush=True)
t = time.time()
viewer.close()
print("closed in", round(time.time() - t, 1), "s", flush=True)
