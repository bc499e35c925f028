"""Large images: read window by window, prompted by region, segmented by tiles, from numpy, dask and zarr.

"Large" is a plane of more than ``source.SCALING_SAMPLE_PIXELS``; the tests lower that
bound so that real images of a few hundred pixels take the large-image paths in seconds.
"""

import numpy as np
import pytest
import tifffile
import zarr
from coins_reference import iou
from skimage import data

from napari_sam import source as source_module
from napari_sam.automatic.tiled import label_everything, segment_tiled
from napari_sam.cli import main
from napari_sam.evaluation import f1_score
from napari_sam.predictor import Predictor
from napari_sam.preprocess import RgbScaling, as_rgb
from napari_sam.source import PlaneSource


@pytest.fixture
def small_is_large(monkeypatch):
    """Planes above 128 x 128 pixels count as large."""
    monkeypatch.setattr(source_module, "SCALING_SAMPLE_PIXELS", 128 * 128)


def _float_image():
    rng = np.random.default_rng(0)
    image = data.coins().astype(np.float32) * 13.0 + rng.normal(0, 5, (303, 384)).astype(np.float32)
    image[10, 10] = np.nan
    return image


def test_windows_of_a_small_plane_are_as_rgb_of_the_whole():
    image = _float_image()
    whole = as_rgb(image)
    source = PlaneSource(image)
    assert not source.large
    np.testing.assert_array_equal(source.rgb((50, 20, 200, 120)), whole[20:120, 50:200])
    np.testing.assert_array_equal(source.rgb(), whole)


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_windows_of_a_large_plane_share_one_scaling_whatever_the_array(small_is_large, tmp_path, kind):
    image = _float_image()
    if kind == "dask":
        import dask.array as da

        array = da.from_array(image, chunks=(100, 128))
    elif kind == "zarr":
        array = zarr.create_array(str(tmp_path / "image.zarr"), shape=image.shape, chunks=(100, 128),
                                  dtype=image.dtype)
        array[...] = image
    else:
        array = image
    source = PlaneSource(array)
    assert source.large
    window = (50, 20, 200, 120)
    expected = RgbScaling.of(image[::3, ::3, None]).apply(image[20:120, 50:200, None])  # a 1-in-3 sample
    np.testing.assert_array_equal(source.rgb(window)[..., 0], expected[..., 0])
    with pytest.raises(Exception, match="too large to read as one RGB array"):
        source.rgb()
    overview = source.overview(96)  # blocks of 384 // 96 = 4 x 4 pixels averaged
    assert overview.shape == (303 // 4, 384 // 4, 3)
    rgb = RgbScaling.of(image[::3, ::3, None]).apply(image[:300, :384, None])[..., 0]
    np.testing.assert_allclose(overview[..., 0], rgb.reshape(75, 4, 96, 4).mean(axis=(1, 3)), atol=1e-3)


def test_the_overview_comes_from_a_pyramid_level_when_there_is_one(small_is_large):
    image = data.coins()
    levels = [image, image[::2, ::2], image[::4, ::4]]
    source = PlaneSource(levels)
    assert source.shape == (303, 384)
    np.testing.assert_array_equal(source.overview(90)[..., 0], image[::4, ::4])  # 76 x 96: the coarsest that fits
    # level 1 is itself large (above the lowered bound): read band by band (here at its own resolution)
    np.testing.assert_array_equal(source.overview(150)[..., 0], image[::2, ::2])
    # only the full resolution is large enough (at most twice the side asked for: not reduced)
    np.testing.assert_array_equal(source.overview(200)[..., 0], image)


def test_a_large_image_is_prompted_by_region_with_the_masks_of_a_small_one(small_is_large, lite_medsam):
    coins = data.coins()
    big = np.tile(coins, (2, 2))
    reference = Predictor(lite_medsam)
    source_module.SCALING_SAMPLE_PIXELS = 10**9  # (the reference: coins read whole)
    reference.set_image(coins)
    source_module.SCALING_SAMPLE_PIXELS = 128 * 128
    box = np.array([128, 26, 182, 77])
    expected = reference.predict(box=box).masks[0]
    predictor = Predictor(lite_medsam)
    predictor.set_image(big)
    assert predictor.large and predictor.embedding.original_size == big.shape
    offset = np.array([384, 303, 384, 303])
    (answer,) = predictor.predict_regions(box=box + offset)
    x0, y0, x1, y1 = answer.region
    assert answer.masks.shape == (1, y1 - y0, x1 - x0) and (x1 - x0) < 384  # only its window
    whole = answer.expanded(big.shape).masks[0]
    assert iou(whole[303:, 384:], expected) > 0.97
    np.testing.assert_array_equal(predictor.predict(box=box + offset).masks[0], whole)
    # a box no window holds: answered from the overview, on the mask's bounding box only
    (coarse,) = predictor.predict_regions(box=[0, 0, 700, 580])
    assert coarse.masks.shape[1:] == (coarse.region[3] - coarse.region[1], coarse.region[2] - coarse.region[0])
    assert predictor.last_coarse == pytest.approx(768 / 256)  # and it says so
    predictor.predict_regions(box=box + offset)
    assert predictor.last_coarse is None
    assert predictor.needs_encoder(box=[10, 10, 40, 40])  # a new zoomed window
    assert not predictor.needs_encoder(box=box + offset)  # embedded already


@pytest.fixture(scope="module")
def coins_mosaic():
    return np.tile(data.coins()[:160, :192], (2, 2))  # 320 x 384, a dozen coins: 2 x 2 tiles of 192 px


@pytest.fixture(scope="module")
def tiled_mosaic(coins_mosaic, lite_medsam):
    return segment_tiled(coins_mosaic, lite_medsam, tile=192, halo=48)


def test_tiled_segment_everything_agrees_with_one_window(coins_mosaic, lite_medsam, tiled_mosaic):
    whole = label_everything(coins_mosaic, lite_medsam, tile=512, halo=48)  # fits one tile: not tiled
    assert tiled_mosaic.tiles == 4 and tiled_mosaic.segmented == 4
    # The coins (the seams cross some): measured F1 1.0 against the untiled run. (Small
    # objects in the bright band between the copies come and go with the window's thresholds.)
    coins = [_objects_of_at_least(x, 400) for x in (whole, tiled_mosaic.labels)]
    assert f1_score(*coins) >= 0.95, f1_score(*coins)


def _objects_of_at_least(labels, area):
    sizes = np.bincount(labels.ravel())
    return np.where(sizes[labels] >= area, labels, 0)


def test_samkit_segment_writes_a_large_image_tile_by_tile_into_zarr(small_is_large, coins_mosaic, tiled_mosaic,
                                                                     tmp_path, capsys):
    """The TIFF is read lazily (zarr over the file), tiles are painted into a zarr array: the same labels."""
    tifffile.imwrite(tmp_path / "mosaic.tif", coins_mosaic, tile=(128, 128))
    args = ["segment", str(tmp_path / "mosaic.tif"), "--tile", "192", "--halo", "48", "--store", str(tmp_path / "s")]
    assert main([*args, "-o", str(tmp_path / "labels.zarr"), "--overlay", str(tmp_path / "o.png")]) == 0
    err = capsys.readouterr().err
    assert "4 tiles of 192 px with a 48 px halo" in err
    out = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    np.testing.assert_array_equal(out[...], tiled_mosaic.labels)
    assert not (tmp_path / ".labels.zarr.tiles").exists() and (tmp_path / "o.png").is_file()
    # the same labels as a TIFF; every embedding now comes from the store
    assert main([*args, "-o", str(tmp_path / "labels.tif")]) == 0
    err = capsys.readouterr().err
    assert "0 computed" in err, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), out[...])


@pytest.mark.slow
def test_the_tiles_of_one_image_run_on_dask_even_when_a_worker_dies(coins_mosaic, tiled_mosaic, lite_medsam,
                                                                     tmp_path):
    """A LocalCluster of 2 processes; one is killed once the first tile is written: Dask runs its tile
    again elsewhere, and the labels are the serial run's."""
    from worker_kill import run_killing_one_worker

    from napari_sam.cluster import connect
    from napari_sam.image_task import SegmentSettings

    path = tmp_path / "mosaic.tif"
    tifffile.imwrite(path, coins_mosaic)
    parts = tmp_path / "parts"
    client, cluster, _threads = connect(workers=2)
    with cluster, client:
        out = run_killing_one_worker(client, lambda: segment_tiled(
            path, lite_medsam, tile=192, halo=48, client=client, parts=parts, worker_settings=SegmentSettings(),
            worker_threads=1), started=lambda: bool(list(parts.glob("tile-*"))))
    assert out.tiles == 4 and out.segmented + out.reused == 4
    np.testing.assert_array_equal(out.labels, tiled_mosaic.labels)


@pytest.mark.slow
def test_samkit_segment_with_workers_sends_one_large_image_s_tiles_to_dask(coins_mosaic, tiled_mosaic, tmp_path,
                                                                         capsys):
    tifffile.imwrite(tmp_path / "mosaic.tif", coins_mosaic)
    out = tmp_path / "labels.tif"
    assert main(["segment", str(tmp_path / "mosaic.tif"), "-o", str(out), "--tile", "192", "--halo", "48",
                 "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "the tiles run on Dask (2 workers)" in err, err
    np.testing.assert_array_equal(tifffile.imread(out), tiled_mosaic.labels)


def test_the_point_grid_strategy_runs_tile_by_tile_too(coins_mosaic, lite_medsam):
    """Meta's point grid (strategy "points") in every tile; LiteMedSAM's weights declared as a
    point model, as the widget tests do, so no SAM download is needed."""
    import copy
    from dataclasses import replace

    model = copy.deepcopy(lite_medsam)
    model.spec = replace(model.spec, name="lite_points", prompt_types=("points", "boxes", "masks"), multimask=True)
    calls = []
    # (LiteMedSAM answers points poorly: no filter, so that every tile paints something)
    amg = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    result = segment_tiled(coins_mosaic, model, tile=192, halo=48, amg=amg,
                           progress=lambda done, total: calls.append((done, total)))
    assert result.tiles == 4 and calls[-1] == (4, 4) and calls == sorted(calls)
    assert result.labels.shape == coins_mosaic.shape and result.objects > 0
