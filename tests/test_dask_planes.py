"""A stack's planes as Dask tasks: from Python, the command line and the automatic widget.

Real data: four frames of ``skimage.data.coins()`` drifting a few pixels per frame.
Every Dask run must give exactly the labels of the run in this process.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import data
from worker_kill import run_killing_one_worker

from napari_sam.automatic.planes import StackRequest, plane_request, segment_stack
from napari_sam.image_task import SegmentSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def movie():
    image = data.coins()
    return np.stack([image[40 + 3 * t:40 + 3 * t + 120, 100 + 2 * t:100 + 2 * t + 160] for t in range(4)])


def _request(movie, **kwargs) -> StackRequest:
    return StackRequest(image=movie, mode=kwargs.pop("mode", "everything"), planes=[(t,) for t in range(len(movie))],
                        **kwargs)


@pytest.fixture(scope="module")
def serial(movie, lite_medsam):
    return segment_stack(_request(movie), lite_medsam)


def test_a_plane_s_request_carries_only_that_plane(movie):
    boxes = {(1,): (np.array([[10.0, 10, 50, 50]]), np.array([7]))}
    request = _request(movie, mode="boxes", boxes=boxes)
    assert plane_request(request, (0,)) is None  # nothing to segment there: no task
    one = plane_request(request, (1,))
    assert one.image.shape == (120, 160) and np.array_equal(one.image, movie[1]) and one.planes == [()]
    assert one.boxes == {None: boxes[(1,)]} and one.store is None
    rough = np.zeros(movie.shape, np.uint16)
    rough[2, 5:9, 5:9] = 3
    labels = _request(movie, mode="labels", rough_labels=rough)
    assert plane_request(labels, (1,)) is None and plane_request(labels, (2,)).rough_labels.max() == 3


def test_the_planes_run_on_dask_with_the_serial_labels_even_when_a_worker_dies(movie, serial, tmp_path):
    """A LocalCluster of 2 processes; a worker is SIGKILLed once the first plane is back: Dask runs
    its plane again elsewhere, and every plane's labels are the serial run's (numbered in plane order)."""
    from napari_sam.cluster import connect

    assert len(np.unique(serial)) > 10
    client, cluster, _threads = connect(workers=2)
    with cluster, client:
        seen = []
        labels = run_killing_one_worker(client, lambda: segment_stack(
            _request(movie), None, progress=lambda done, total: seen.append(done), client=client,
            worker_settings=SegmentSettings(), worker_threads=1), started=lambda: bool(seen))

        boxes = {(2,): (np.array([[20.0, 20, 70, 70]]), np.array([5]))}  # boxes on one plane: one task
        by_box = segment_stack(_request(movie, mode="boxes", boxes=boxes), None, client=client,
                               worker_settings=SegmentSettings(), worker_threads=1)
    np.testing.assert_array_equal(labels, serial)
    assert seen[-1] == 4
    assert not by_box[[0, 1, 3]].any() and set(np.unique(by_box[2])) == {0, 5}


def test_samkit_segment_sends_a_stack_s_planes_to_dask(movie, tmp_path, lite_medsam, capsys):
    from napari_sam.cli import main

    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="minisblack")
    for name, extra in (("serial", []), ("dask", ["--workers", "2"])):
        assert main(["segment", str(tmp_path / "movie.tif"), "-o", str(tmp_path / f"{name}.tif"), "--axes", "TYX",
                     *extra]) == 0
    assert "the planes ran on Dask (2 workers)" in capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "dask.tif")
    assert len(np.unique(labels)) > 5
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "serial.tif"))


@pytest.mark.gui
def test_the_automatic_widget_sends_a_stack_layer_to_a_local_cluster(make_napari_viewer, qtbot, movie, serial,
                                                                      lite_medsam):
    from napari_sam._widgets.automatic import AutomaticSegmentationWidget

    viewer = make_napari_viewer()
    widget = AutomaticSegmentationWidget(viewer, model=lite_medsam)
    viewer.window.add_dock_widget(widget)
    viewer.add_image(movie, name="movie")
    widget.run_on.where.value = "address"
    assert widget.run() is None and "scheduler's address" in widget.status.value  # nothing started
    widget.run_on.where.value = "local"
    widget.run_on.workers.value = 2
    assert widget.run() is not None
    assert "to the local Dask cluster" in widget.status.value
    qtbot.waitUntil(lambda: not widget.running, timeout=300_000)
    result = viewer.layers["movie auto (lite_medsam)"]
    np.testing.assert_array_equal(result.data, serial)
    assert widget.progress.value == 1000
