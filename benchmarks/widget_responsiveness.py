"""The automatic widget against the same run without napari: speed, progress and GUI stalls.

For each image (``skimage.data.coins()`` and ``skimage.data.cell()``), interleaved
``--repeats`` times:

* **headless**: :func:`napari_sam.automatic.planes.segment_stack` on the request the
  widget builds, in this process, without a viewer;
* **widget**: the *Automatic segmentation* widget's *Run* in a real viewer (napari's
  thread worker), timed from the click to the result layer.

While the widget runs, a Qt timer ticks every 20 ms on the GUI thread: a gap between
ticks longer than 200 ms is a **stall** (the viewer did not respond). The progress bar is
read at every tick: it must move during the run. Needs a display (``xvfb-run -a``)::

    xvfb-run -a python benchmarks/widget_responsiveness.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from skimage import data

    from napari_sam import load_model
    from napari_sam._widgets.automatic import AutomaticSegmentationWidget
    from napari_sam.automatic.planes import segment_stack

    model = load_model("lite_medsam")
    viewer = napari.Viewer(show=True)
    widget = AutomaticSegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Automatic segmentation")
    widget.set_model(model)
    app = QApplication.instance()
    print("| image | run | headless s | widget s | widget / headless | progress values seen | "
          "stalls > 200 ms | longest gap ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("coins", "cell"):
        image = getattr(data, name)()
        layer = viewer.add_image(image, name=name)
        widget.image.value = layer
        for run in range(args.repeats):
            request = widget.build_request()
            start = time.perf_counter()
            segment_stack(request, model)
            headless = time.perf_counter() - start

            ticks, progress = [], set()
            timer = QTimer()
            timer.setInterval(20)
            timer.timeout.connect(lambda: (ticks.append(time.perf_counter()), progress.add(widget.progress.value)))
            start = time.perf_counter()
            timer.start()
            widget.run()
            while widget.running:
                app.processEvents()
                time.sleep(0.005)
            seconds = time.perf_counter() - start
            timer.stop()
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            stalls = sum(g > 0.2 for g in gaps)
            moving = sorted(v for v in progress if 0 < v < 1000)
            print(f"| {name} | {run + 1} | {headless:.1f} | {seconds:.1f} | {seconds / headless:.2f} | "
                  f"{len(moving)} between 0 and 100 % | {stalls} | {1000 * max(gaps, default=0):.0f} |", flush=True)
        viewer.layers.clear()
        # (let napari finish removing them before adding more: napari 0.9.2 on Xvfb crashed in
        # glDrawArrays when all layers were removed and a new one drawn at once while a thread computed)
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
