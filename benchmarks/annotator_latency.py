"""Click-to-preview latency of the napari annotator (issue target: under 100 ms).

Opens a real napari viewer with ``skimage.data.coins()``, docks the annotator with
the default model, waits for the embedding, then for each of 24 coin boxes:

1. clears the prompts, adds the box to the "SAM boxes" layer exactly as the
   mouse tool does (``add_rectangles``: the same layer events), and measures the
   time until the "SAM preview" layer holds the new mask (``preview``: prompt
   read, prompt encoder, mask decoder, upsampling, layer update);
2. then the time until Qt has processed the resulting events and redrawn the
   canvas (``+ redraw``); on Xvfb this is Mesa's software OpenGL, slower than
   any laptop's GPU.

It prints medians and 90th percentiles and the decoder time the widget itself
measured (``last_preview_seconds``). Needs a display (``xvfb-run -a``)::

    xvfb-run -a python benchmarks/annotator_latency.py [--model lite_medsam] [--precision float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--precision", default=None, help="image encoder precision (default: the configured one)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the 24 boxes")
    args = parser.parse_args(argv)
    if args.precision:
        os.environ["NAPARI_SAMKIT_PRECISION"] = args.precision

    import napari
    import numpy as np
    from evaluate_quality import coins_reference
    from qtpy.QtWidgets import QApplication
    from skimage import measure

    from napari_sam._widgets import AnnotatorWidget

    image, reference = coins_reference()
    boxes = [r.bbox for r in measure.regionprops(reference)]  # (row0, col0, row1, col1)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.add_image(image, name="coins")
    widget = AnnotatorWidget(viewer, model=args.model)
    viewer.window.add_dock_widget(widget, name="Annotator")
    start = time.perf_counter()
    widget.wait_until_ready(timeout=600)
    embed_seconds = time.perf_counter() - start
    canvas = viewer.window._qt_viewer.canvas.native

    def settle() -> None:
        for _ in range(3):
            QApplication.processEvents()

    preview_ms, redraw_ms, decoder_ms = [], [], []
    for repeat in range(args.repeats + 1):  # the first pass warms up
        for row0, col0, row1, col1 in boxes:
            widget.clear_prompts()
            settle()
            corners = np.array([[row0, col0], [row0, col1], [row1, col1], [row1, col0]], float)
            t0 = time.perf_counter()
            widget.boxes_layer.add_rectangles(corners)
            widget.wait_until_ready(timeout=60)  # returns at once when the preview ran on the GUI thread
            t1 = time.perf_counter()
            canvas.repaint()  # a synchronous redraw of the canvas
            settle()
            t2 = time.perf_counter()
            if not widget.preview_layer.data.any():
                raise RuntimeError(f"no preview for box {(row0, col0, row1, col1)}")
            if repeat:
                preview_ms.append(1000 * (t1 - t0))
                redraw_ms.append(1000 * (t2 - t0))
                decoder_ms.append(1000 * widget.last_preview_seconds)

    def stats(values: list[float]) -> str:
        p90 = float(np.percentile(values, 90))
        return f"median {statistics.median(values):6.1f} ms   90th percentile {p90:6.1f} ms"

    print(f"model {args.model}, precision {widget.predictor.precision or 'default'}, "
          f"{len(boxes)} coin boxes x {args.repeats}, load average {os.getloadavg()[0]:.1f}; "
          f"embedding (first, incl. model load) {embed_seconds:.2f} s")  # fmt: skip
    print(f"  box added -> preview layer updated : {stats(preview_ms)}")
    print(f"  ... -> canvas redrawn (Xvfb, software GL): {stats(redraw_ms)}")
    print(f"  decoder + upsampling (widget's own timer): {stats(decoder_ms)}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
