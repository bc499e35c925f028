"""Regenerate the 'segment through stack' screenshots in docs/images/ from a real napari viewer.

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python docs/make_volume_screenshots.py

On the plugin's sample 'blobs stack' (24 x 192 x 192): box a blob on plane 12, press
Shift+P, look at the stack preview on another plane and in 3D, commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import open_viewer, settle, shoot  # noqa: E402


def main() -> None:
    from skimage import measure

    from napari_sam._widgets._sample_data import blobs_stack

    stack = blobs_stack()[0][0]
    viewer, widget = open_viewer(stack, "blobs stack")
    viewer.dims.set_current_step(0, 12)
    widget.wait_until_ready(timeout=600)
    truth = measure.label(stack[12] > 120)
    region = max(measure.regionprops(truth), key=lambda r: r.area)
    widget.add_boxes(np.array(region.bbox) + [-3, -3, 3, 3])
    widget.wait_until_ready()
    widget.segment_through_stack()
    widget.stack_tools.wait(timeout=900)
    settle(1.0)
    viewer.dims.set_current_step(0, 16)
    widget.wait_until_ready(timeout=600)
    shoot(viewer, "stack_preview_plane.png")
    viewer.dims.ndisplay = 3
    viewer.layers["blobs stack"].visible = False
    viewer.camera.angles = (15, 35, 80)
    shoot(viewer, "stack_preview_3d.png")
    viewer.dims.ndisplay = 2
    viewer.layers["blobs stack"].visible = True
    widget.commit()
    print(widget.controls.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
