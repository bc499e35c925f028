"""The image-series annotator: the core (listing, label files, resume, save / reload) and the widget in a viewer.

Images are real: skimage's coins (and crops of them) and its cell micrograph, written
to a temporary folder as TIFF and PNG files. The viewer test runs under Xvfb
(``xvfb-run -a pytest -m gui``) with LiteMedSAM, counting its encoder runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from skimage import data as skdata
from skimage import filters, measure

from napari_sam.embedding import EmbeddingCache
from napari_sam.errors import InputFileError
from napari_sam.series import ImageSeries, first_plane_key, is_rgb


def coin_crops() -> list[np.ndarray]:
    """Three 128 x 128 uint8 crops of skimage's coins (no network needed)."""
    coins = skdata.coins()
    return [coins[r:r + 128, c:c + 128] for r, c in ((0, 0), (100, 130), (170, 250))]


def write_folder(folder, images: dict[str, np.ndarray]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        if name.endswith(".png"):
            PILImage.fromarray(image).save(folder / name)
        else:
            tifffile.imwrite(folder / name, image)
    return folder


def coin_labels(image: np.ndarray) -> np.ndarray:
    """Otsu-thresholded coins, one id each: real labels of the crop."""
    return measure.label(image > filters.threshold_otsu(image)).astype(np.uint16)


@pytest.fixture
def coins_folder(tmp_path):
    a, b, c = coin_crops()
    return write_folder(tmp_path / "coins", {"c01.tif": a, "c02.png": b, "c03.tif": c})


# ----------------------------------------------------------------------- core


def test_listing_first_unlabelled_and_save_reload(coins_folder):
    series = ImageSeries.open(coins_folder)
    assert [p.name for p in series.images] == ["c01.tif", "c02.png", "c03.tif"]
    assert series.describe(1) == "image 2 of 3: c02.png"
    assert series.labels_path(1) == coins_folder / "c02_labels.tif"
    assert series.first_unlabelled() == 0

    image = series.read_image(0)
    labels = coin_labels(image)
    assert labels.max() > 3
    assert series.save_labels(0, labels) == coins_folder / "c01_labels.tif"
    assert series.first_unlabelled() == 1
    again = ImageSeries.open(coins_folder)  # the labels file is not listed as an image
    assert len(again) == 3
    reloaded = again.read_labels(0, image.shape)
    assert reloaded.dtype == np.uint32
    np.testing.assert_array_equal(reloaded, labels)

    # empty labels are not written (the image stays "without labels") ...
    assert series.save_labels(1, np.zeros((128, 128), np.uint32)) is None
    assert not (coins_folder / "c02_labels.tif").exists() and series.first_unlabelled() == 1
    # ... unchanged labels are not written again, but erasing every object is saved
    assert series.save_labels(0, reloaded, original=reloaded.copy()) is None
    assert series.save_labels(0, np.zeros_like(reloaded), original=reloaded) is not None
    assert not series.read_labels(0, image.shape).any() and series.first_unlabelled() == 1


def test_output_folder_mirrors_the_images_and_finds_their_labels(tmp_path):
    a, b, c = coin_crops()
    write_folder(tmp_path / "plate1", {"well_a.tif": a})
    write_folder(tmp_path / "plate2", {"well_a.tif": b, "well_b.tif": c})
    out = tmp_path / "out"
    series = ImageSeries.open([tmp_path / "plate1", tmp_path / "plate2"], output=out)
    assert series.labels_path(0) == out / "plate1" / "well_a_labels.tif"
    assert series.labels_path(1) == out / "plate2" / "well_a_labels.tif"  # same name, other folder: no clash
    series.save_labels(1, coin_labels(b))
    assert series.first_unlabelled() == 0 and [series.has_labels(i) for i in range(3)] == [False, True, False]
    assert not any((tmp_path / "plate2").glob("*_labels.tif"))  # nothing written beside the images
    np.testing.assert_array_equal(ImageSeries.open(tmp_path / "plate*" / "*.tif", output=out).read_labels(1, b.shape),
                                  coin_labels(b))
    # a list file names the same images
    listing = tmp_path / "images.txt"
    listing.write_text("plate1/well_a.tif\n# a comment\nplate2/well_b.tif\n")
    assert [p.name for p in ImageSeries.open(listing).images] == ["well_a.tif", "well_b.tif"]


def test_refuses_what_would_lose_labels(coins_folder, tmp_path):
    a, b, _ = coin_crops()
    # two images whose labels would be one file
    write_folder(tmp_path / "twins", {"cell.tif": a, "cell.png": b})
    with pytest.raises(InputFileError, match="share the labels file"):
        ImageSeries.open(tmp_path / "twins")
    # a labels file of another shape is not read (nor overwritten by the widget)
    series = ImageSeries.open(coins_folder)
    tifffile.imwrite(coins_folder / "c03_labels.tif", np.ones((10, 10), np.uint8))
    with pytest.raises(InputFileError, match="c03_labels.tif has shape"):
        series.read_labels(2, (128, 128))
    # saving into a place that cannot take files says which image and leaves nothing behind
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file")
    series = ImageSeries.open(coins_folder, output=blocked)
    with pytest.raises(InputFileError, match="labels of c01.tif were not saved"):
        series.save_labels(0, coin_labels(a))


def test_an_unreadable_image_says_which_and_why(coins_folder):
    (coins_folder / "c02b.png").write_bytes(b"not a png")
    series = ImageSeries.open(coins_folder)
    assert series.name(2) == "c02b.png"
    with pytest.raises(InputFileError, match="c02b.png"):
        series.prepare(2)
    assert series.prepare(3).data.shape == (128, 128)  # the others are fine


def test_prepare_puts_the_first_plane_embedding_in_cache_and_store(coins_folder, lite_medsam, tmp_path):
    from napari_sam.store import EmbeddingStore, open_in_folder

    series = ImageSeries.open(coins_folder)
    cache = EmbeddingCache()
    prepared = series.prepare(1, lite_medsam, cache=cache, store_folder=tmp_path / "store", name="c02")
    assert not prepared.rgb and prepared.labels is None and prepared.key.plane is None
    assert cache.get(prepared.key) is not None
    store, _ = open_in_folder(tmp_path / "store", prepared.data, lite_medsam, prepared.key.precision, name="c02")
    assert isinstance(store, EmbeddingStore) and store.get(prepared.key, memory=False) is not None
    # the key of the plane the annotator shows first, for an RGB image and a stack too
    rgb = skdata.astronaut()[:64, :64]
    assert is_rgb(rgb) and first_plane_key(rgb, True, None, lite_medsam)[1].view == ""
    stack, key = first_plane_key(np.stack(coin_crops()), False, None, lite_medsam)
    assert key.plane == (0,) and key == stack.key(0, lite_medsam, None)


# ----------------------------------------------------------------------- the widget in a viewer


def coins_reference():
    """skimage's coins and coin 1 of its watershed tutorial (mask and box row0, col0, row1, col1)."""
    from scipy import ndimage as ndi
    from skimage import segmentation

    coins = skdata.coins()
    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2
    labels = measure.label(ndi.binary_fill_holes(segmentation.watershed(filters.sobel(coins), markers) - 1))
    coin = max(measure.regionprops(labels), key=lambda r: r.area)
    return coins, labels == coin.label, np.array(coin.bbox) + [-3, -3, 2, 2]


def rectangle(box):
    r0, c0, r1, c1 = box
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)


@pytest.mark.gui
def test_series_widget_saves_moves_prefetches_and_resumes(make_napari_viewer, lite_medsam, qtbot, tmp_path,
                                                          monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_sam import series as series_module
    from napari_sam._widgets.series import ImageSeriesWidget

    coins, coin, box = coins_reference()
    folder = write_folder(tmp_path / "images", {"a_coins.tif": coins, "b_cell.png": skdata.cell()[:256, :256],
                                                "c_coins.tif": coins[::-1, ::-1].copy()})
    runs = []
    hook = lite_medsam.image_encoder.register_forward_pre_hook(lambda module, args: runs.append(1))
    try:
        viewer = make_napari_viewer()
        widget = ImageSeriesWidget(viewer, model=lite_medsam)
        viewer.window.add_dock_widget(widget, name="Image series")
        keys = viewer.window._qt_viewer._key_map_handler
        assert widget.open(folder) == 0
        assert widget.controls.counter.value == "image 1 of 3: a_coins.tif"
        annotator = widget.annotator
        annotator.controls.store.value = tmp_path / "store"  # embeddings kept on disk too
        annotator.wait_until_ready(timeout=300)
        assert annotator.image_layer is widget.image_layer and annotator.labels_layer is widget.labels_layer

        # box a coin, commit into the series' labels
        annotator.boxes_layer.add_rectangles(rectangle(box))
        annotator.wait_until_ready()
        assert annotator.commit() == [1]

        # the next image is read and embedded in the background, under the annotator's key
        widget.wait_until_next_ready(timeout=300)
        assert widget.next_ready
        key, runs_before = widget.prepared.key, len(runs)

        # a failed save shows the error and stays on the image
        def refuse(path, labels):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(series_module, "write_labels", refuse)
        records = len(notification_manager.records)
        keys.press_key("Shift-N")
        assert widget.index == 0 and any("No space left" in str(n.message)
                                         for n in notification_manager.records[records:])
        monkeypatch.undo()

        # Shift+N: labels saved, the next image shown with its embedding from the cache (no encoder run)
        keys.press_key("Shift-N")
        assert widget.index == 1 and widget.controls.counter.value == "image 2 of 3: b_cell.png"
        saved = tifffile.imread(folder / "a_coins_labels.tif")
        assert np.unique(saved).tolist() == [0, 1]
        assert (saved.astype(bool) & coin).sum() / (saved.astype(bool) | coin).sum() > 0.9
        assert annotator.ready and annotator.predictor.embedding.key == key
        annotator.wait_until_ready(timeout=300)
        assert len(runs) == runs_before
        assert annotator.predictor.store.get(key, memory=False) is not None  # the store the annotator uses
        assert widget.controls.status.value == "Saved a_coins_labels.tif."
        assert annotator.labels_layer is widget.labels_layer and not widget.labels_layer.data.any()

        # Shift+B: back to the first image, its labels read from the file; nothing written for the second
        widget.wait_until_next_ready(timeout=300)
        keys.press_key("Shift-B")
        assert widget.index == 0
        np.testing.assert_array_equal(widget.labels_layer.data, saved)
        assert not (folder / "b_cell_labels.tif").exists()
        assert [layer.name for layer in viewer.layers][:2] == ["a_coins", "a_coins_labels"]

        # opening the folder again resumes at the first image without labels
        assert widget.open(folder) == 1
        assert widget.controls.counter.value == "image 2 of 3: b_cell.png"
        widget.controls.first_unlabelled.clicked.emit()
        assert widget.index == 1

        # an unreadable image: said which, shown empty, skipped with Next
        (folder / "d_broken.png").write_bytes(b"not a png")
        widget.open(folder)
        with pytest.raises(InputFileError, match="d_broken.png"):
            widget.go_to(3)
        assert widget.image_layer is None and widget.controls.counter.value.endswith("(cannot be read)")
        assert widget.previous_image() == 2 and widget.image_layer.name == "c_coins"

        # closing the viewer while the next image's encoder runs does not crash, and waits for it
        from qtpy.QtCore import QThreadPool

        # (and saves the labels on screen)
        widget.go_to(0)
        annotator.wait_until_ready(timeout=300)
        annotator.cache.clear()  # the next image's embedding must be computed again
        widget._prefetch_next()
        assert widget._prefetch_running
        widget.labels_layer.data[:4, :4] = 7  # an edit nobody saved
        viewer.close()
        assert QThreadPool.globalInstance().activeThreadCount() == 0
        assert (tifffile.imread(folder / "a_coins_labels.tif")[:4, :4] == 7).all()
    finally:
        hook.remove()
