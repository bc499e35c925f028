"""Large images in a real viewer (Xvfb): a multiscale layer in the annotator and the automatic widget.

"Large" is lowered to planes above 128 x 128 pixels (see test_large_images.py) so that a
mosaic of coins takes the large-image paths: region-local previews and commits, windows
read from level 0, the overview from a coarse level, tiles in the automatic widget.
"""

import numpy as np
import pytest
from skimage import data

from napari_sam import source as source_module
from napari_sam._widgets import AnnotatorWidget
from napari_sam._widgets.automatic import AutomaticSegmentationWidget

pytestmark = pytest.mark.gui


class CountingLevel:
    """An array-like pyramid level in 128 x 128 chunks that counts the pixels read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim, self.size = array.shape, array.dtype, array.ndim, array.size
        self.chunks = (128, 128)
        self.read = 0

    def __getitem__(self, index):
        out = self.array[index]
        self.read += int(np.size(out))
        return out

    def __array__(self, dtype=None, copy=None):
        self.read += self.array.size
        return self.array if dtype is None else self.array.astype(dtype)


@pytest.fixture
def mosaic(monkeypatch):
    monkeypatch.setattr(source_module, "SCALING_SAMPLE_PIXELS", 128 * 128)
    return np.tile(data.coins(), (2, 2))  # 606 x 768


def _coin_box(offset_row: int, offset_col: int) -> np.ndarray:
    """(row0, col0, row1, col1) of the coin at x 128-182, y 26-77 of skimage's coins, in one copy."""
    return np.array([26, 128, 77, 182]) + [offset_row, offset_col, offset_row, offset_col]


def test_a_box_on_a_multiscale_layer_is_previewed_and_committed_region_by_region(make_napari_viewer, qtbot,
                                                                                   mosaic, lite_medsam):
    level0 = CountingLevel(mosaic)
    viewer = make_napari_viewer()
    viewer.add_image([level0, mosaic[::2, ::2], mosaic[::4, ::4]], multiscale=True, name="slide")
    qtbot.wait(300)  # napari draws the layer (reading what it shows)
    level0.read = 0
    widget = AnnotatorWidget(viewer, model=lite_medsam)
    viewer.window.add_dock_widget(widget, name="Annotator")
    widget.wait_until_ready(timeout=300)
    assert widget.predictor.large
    assert widget.predictor.embedding.original_size == mosaic.shape  # the overview stands for the whole plane
    box = _coin_box(303, 384)  # the coin in the bottom-right copy
    widget.add_boxes([box])
    widget.wait_until_ready(timeout=300)
    x0, y0, x1, y1 = widget.preview_region
    assert (x1 - x0) * (y1 - y0) < mosaic.size / 4  # the preview covers the coin's window only
    assert x0 <= box[1] and y0 <= box[0] and x1 >= box[3] and y1 >= box[2]
    preview = np.asarray(widget.preview_layer.data)
    rows, cols = np.nonzero(preview)
    assert rows.min() >= box[0] - 5 and rows.max() <= box[2] + 5 and cols.min() >= box[1] - 5
    ids = widget.commit()
    labels = np.asarray(widget.labels_layer.data)
    assert ids == [1]
    coin = labels == 1
    assert 1400 < coin.sum() < 2000  # one coin: 1,671 pixels from the same box on coins() alone; here 1,677
    r, c = np.nonzero(coin)
    assert r.min() >= box[0] - 5 and r.max() <= box[2] + 5 and c.min() >= box[1] - 5 and c.max() <= box[3] + 5
    assert not np.asarray(widget.preview_layer.data).any()  # the committed object's preview is gone
    # level 0 is read window by window: the annotator read a fraction of it (signature chunks, the box's window)
    assert level0.read < mosaic.size / 2, level0.read
    qtbot.waitUntil(lambda: not widget._jobs.busy and not widget._previews.busy, timeout=300_000)


def test_the_automatic_widget_segments_a_multiscale_layer_tile_by_tile(make_napari_viewer, qtbot, monkeypatch,
                                                                       lite_medsam):
    monkeypatch.setattr(source_module, "SCALING_SAMPLE_PIXELS", 128 * 128)
    mosaic = np.tile(data.coins()[:160, :192], (2, 2))  # 320 x 384, a dozen coins
    viewer = make_napari_viewer()
    viewer.add_image([mosaic, mosaic[::2, ::2]], multiscale=True, name="slide")
    widget = AutomaticSegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Automatic")
    widget.set_model(lite_medsam)
    widget.tiling["tile"].value, widget.tiling["halo"].value = 192, 48
    assert widget.tiling["tile"].native.isVisibleTo(widget.native)
    worker = widget.run()
    assert "in 4 tiles of 192 px" in widget.status.value
    progress = []
    qtbot.waitUntil(lambda: progress.append(widget.progress.value) or not widget.running, timeout=600_000)
    layer = widget.last_layer
    assert layer is not None and layer.data.shape == mosaic.shape
    sizes = np.bincount(np.asarray(layer.data).ravel())[1:]
    assert (sizes > 400).sum() >= 10  # the coins (measured: 12)
    assert widget.progress.value == 1000 and any(0 < p < 1000 for p in progress)
    assert worker is not None
