"""Regenerate docs/images/image_series.png: the image-series annotator on a folder of nuclei images.

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python docs/make_series_screenshot.py

Four 256 x 256 quarters of DSB 2018's ``img2d.tif`` (stardist's test image, if the
quality benchmark fetched it; else crops of skimage's coins) are written to a
temporary folder; the first gets labels beforehand, so opening the folder resumes at
the second. Three nuclei are boxed (their ground-truth boxes) and committed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import WINDOW_SIZE, settle, shoot  # noqa: E402

DSB = Path.home() / ".cache" / "napari-samkit" / "eval-data" / "stardist" / "data" / "images"


def quarters() -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Four image quarters and their ground-truth labels (None without them)."""
    import tifffile
    from skimage import data

    if (DSB / "img2d.tif").is_file():
        image, truth = tifffile.imread(DSB / "img2d.tif"), tifffile.imread(DSB / "mask2d.tif")
        corners = [(0, 0), (0, 256), (256, 0), (256, 256)]
    else:
        image, truth = data.coins(), None
        corners = [(0, 0), (0, 128), (47, 0), (47, 128)]
    cuts = [(slice(r, r + 256), slice(c, c + 256)) for r, c in corners]
    return [image[cut] for cut in cuts], [None if truth is None else truth[cut] for cut in cuts]


def boxes_of(truth: np.ndarray | None, count: int) -> list[np.ndarray]:
    """Boxes (row0, col0, row1, col1) around ``count`` large objects of the ground truth."""
    from skimage import measure

    if truth is None:
        return [np.array([40, 40, 110, 110])]
    regions = sorted(measure.regionprops(measure.label(truth)), key=lambda r: -r.area)[:count]
    return [np.array(r.bbox) + [-2, -2, 2, 2] for r in regions]


def main() -> None:
    import napari
    import tifffile

    from napari_sam._widgets import ImageSeriesWidget
    from napari_sam.series import ImageSeries

    images, truths = quarters()
    folder = Path(tempfile.mkdtemp()) / "nuclei"
    folder.mkdir()
    for number, image in enumerate(images, start=1):
        tifffile.imwrite(folder / f"well_A{number:02d}.tif", image)
    first = ImageSeries.open(folder)
    first.save_labels(0, np.zeros(images[0].shape, np.uint16) + (truths[0] if truths[0] is not None else 0))

    viewer = napari.Viewer(show=True, title="napari-samkit image series")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    widget = ImageSeriesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Image series", area="right")
    widget.controls.images.value = folder
    widget.controls.open.clicked.emit()  # resumes at the first image without labels
    widget.wait_until_next_ready(timeout=600)
    annotator = widget.annotator
    annotator.add_boxes(boxes_of(truths[widget.index], 3))
    annotator.wait_until_ready()
    annotator.commit()
    settle(1.0)
    viewer.reset_view()
    shoot(viewer, "image_series.png")
    print(widget.controls.counter.value, "|", annotator.controls.status.value)
    viewer.close()


if __name__ == "__main__":
    main()
