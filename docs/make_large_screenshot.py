"""Screenshot of the annotator on a large image (docs/images/large_annotator.png).

A 12,120 x 12,288 mosaic of skimage's coins (149 MB): the annotator opens it with an
overview embedding, two boxes are previewed from their own windows and committed.
Run under a display: ``xvfb-run -a python docs/make_large_screenshot.py OUT.png``.
"""

import sys
import time

import napari
import numpy as np
from skimage import data

from napari_sam._widgets.annotator import AnnotatorWidget

coins = data.coins()
big = np.tile(coins, (40, 32))
viewer = napari.Viewer(show=True)
viewer.window._qt_window.resize(1500, 1000)
viewer.add_image(big, name="mosaic 12120 x 12288")
widget = AnnotatorWidget(viewer)
viewer.window.add_dock_widget(widget, name="Annotator")
start = time.time()
widget.wait_until_ready(timeout=600)
print(f"ready in {time.time() - start:.1f} s", flush=True)
oy, ox = 303 * 20, 384 * 16  # one copy in the middle
for box in ([26, 128, 77, 182], [27, 189, 76, 243]):
    start = time.time()
    widget.add_boxes([[box[0] + oy, box[1] + ox, box[2] + oy, box[3] + ox]])
    widget.wait_until_ready(timeout=600)
    print(f"box previewed in {time.time() - start:.2f} s, region {widget.preview_region}", flush=True)
widget.commit()
widget.add_boxes([[101 + oy, 20 + ox, 149 + oy, 71 + ox]])  # a third coin, previewed, not committed
widget.wait_until_ready(timeout=600)
viewer.camera.center = (oy + 90, ox + 150)
viewer.camera.zoom = 2.2
viewer.layers.selection.active = widget.points_layer
time.sleep(0.5)
viewer.screenshot(sys.argv[1], canvas_only=False)
viewer.close()
