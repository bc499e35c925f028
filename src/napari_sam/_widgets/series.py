"""The image-series annotator: a folder of images, annotated one at a time with the annotator.

Thin by design: :class:`~napari_sam.series.ImageSeries` decides which images there
are, where their labels are and when they are written; this widget shows one image
as an Image layer with its labels as a Labels layer, points the embedded
:class:`~napari_sam._widgets.annotator.AnnotatorWidget` at both (it commits into the
labels), saves on every move and replaces the two layers by the next image's.

While the person works on one image, the next one is read and its embedding
computed in a thread worker (:meth:`ImageSeries.prepare <napari_sam.series.ImageSeries.prepare>`),
into the annotator's cache and, when its store setting is set, its store, under the
key the annotator looks up: moving on needs no encoder run.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ..errors import ImageError, SamkitError
from ..registry import DEFAULT_MODEL
from ..series import ImageSeries, PreparedImage, channel_axis_of
from ._controls import on_undock
from ._jobs import Lifetime, start_worker, stop_jobs_on_exit
from ._report import error_message
from .annotator import AnnotatorWidget

#: Action -> viewer key binding (none of them is used by the annotator or by napari).
SERIES_KEYS = {"next": "Shift-N", "previous": "Shift-B"}
#: How often (ms) the widget checks whether the next image can be prepared.
PREFETCH_POLL_MS = 250


def key_text(action: str) -> str:
    """The key as people read it, e.g. ``Shift+N``."""
    return SERIES_KEYS[action].replace("-", "+")


class SeriesControls:
    """The series section of the widget, added to ``container`` in display order."""

    def __init__(self, container: Container) -> None:
        self.images = FileEdit(
            label="Images", mode="d", nullable=True, value=None,
            tooltip="A folder of images (TIFF, PNG, JPEG), or type a glob (e.g. /data/*.tif) or a .txt file listing "
            "images; label images (*_labels.tif, *_mask.png, ...) are left out. Press Open.",
        )
        self.output = FileEdit(
            label="Labels folder", mode="d", nullable=True, value=None,
            tooltip="Where <name>_labels.tif files are saved and found (empty: beside each image). Read when you "
            "press Open.",
        )
        self.open = PushButton(text="Open", tooltip="Open the images and resume at the first one without labels.")
        self.counter = Label(value="No images open.")
        self.previous = PushButton(text=f"Previous [{key_text('previous')}]",
                                   tooltip=f"Save the labels and go to the previous image ({key_text('previous')}).")
        self.next = PushButton(text=f"Next [{key_text('next')}]",
                               tooltip=f"Save the labels and go to the next image ({key_text('next')}); its "
                               "embedding was computed while you worked on this one.")
        self.first_unlabelled = PushButton(text="First without labels",
                                           tooltip="Save the labels and go to the first image without a labels file.")
        self.save = PushButton(text="Save labels", tooltip="Save this image's labels now (moving on saves too).")
        self.status = Label(value="")
        for widget in (self.open, self.counter, self.status):
            widget.label = ""
        from qtpy.QtWidgets import QSizePolicy

        for text in (self.counter, self.status):
            text.native.setWordWrap(True)
            text.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        moves = Container(layout="horizontal", labels=False, widgets=[self.previous, self.next])
        jumps = Container(layout="horizontal", labels=False, widgets=[self.first_unlabelled, self.save])
        for row in (moves, jumps):
            row.margins = (0, 0, 0, 0)
        section = Container(labels=True, widgets=[self.images, self.output, self.open, self.counter])
        container.extend([section, moves, jumps, self.status])


class ImageSeriesWidget(Container):
    """Dock widget: open a folder of images, annotate each with the annotator, labels saved on the way.

    Args:
        napari_viewer: the viewer (napari passes it).
        model: registry name, checkpoint path or loaded model, for the annotator.
        device: torch device (default CPU).
    """

    def __init__(self, napari_viewer, model=DEFAULT_MODEL, device: str | None = None) -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.series: ImageSeries | None = None
        self.index: int | None = None  # the image on screen (also when it could not be read)
        self.image_layer = self.labels_layer = None  # the layers of the image on screen
        self._saved_labels: np.ndarray | None = None  # the labels as read or last saved: unchanged ones are not written
        self.prepared: PreparedImage | None = None  # the next image, read and embedded in the background
        self._prefetch_running = False
        self._prefetch_done = None  # the last request the worker finished (or failed)
        self._lifetime = Lifetime()
        self.controls = c = SeriesControls(self)
        self.annotator = AnnotatorWidget(napari_viewer, model=model, device=device)
        self.append(self.annotator)
        self.native.setMaximumWidth(480)
        c.open.clicked.connect(lambda: self._gui(self._open_from_controls))
        c.previous.clicked.connect(lambda: self._gui(self.previous_image))
        c.next.clicked.connect(lambda: self._gui(self.next_image))
        c.first_unlabelled.clicked.connect(lambda: self._gui(self.first_unlabelled))
        c.save.clicked.connect(lambda: self._gui(self._save_and_say))
        self._bind_keys()
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)
        self._timer.setInterval(PREFETCH_POLL_MS)
        self._timer.timeout.connect(self._prefetch_next)
        self._timer.start()
        on_undock(self.native, self.disconnect_viewer)
        stop_jobs_on_exit(self.native, self._on_exit, self._lifetime)

    def _bind_keys(self) -> None:
        actions = {"next": self.next_image, "previous": self.previous_image}
        for action, method in actions.items():
            self.viewer.bind_key(SERIES_KEYS[action], lambda _viewer, m=method: self._gui(m), overwrite=True)

    def disconnect_viewer(self, *_) -> None:
        """The dock widget was closed: save the labels, let go of the keys, stop preparing (the layers stay)."""
        self._timer.stop()
        for key in SERIES_KEYS.values():
            self.viewer.bind_key(key, None)
        self.annotator.disconnect_viewer()
        self._gui(self.save)

    def _on_exit(self) -> None:
        """The viewer closes: save what is on screen (nothing can be shown any more; a failure goes to stderr)."""
        try:
            self._write()
        except Exception as error:  # noqa: BLE001 - the window is gone: the terminal is all there is
            print(f"napari-samkit: {error_message(error, 'saving the labels')}", file=sys.stderr)

    # ------------------------------------------------------------------ reporting

    def _report(self, message: str, level: str = "error") -> None:
        self.controls.status.value = message.splitlines()[0][:160]
        {"error": show_error, "warning": show_warning, "info": show_info}[level](message)

    def _gui(self, method):
        """Run a public method from a button or key: errors become notifications."""
        try:
            return method()
        except Exception as error:  # noqa: BLE001
            self._report(error_message(error, method.__name__.replace("_", " ")))
            return None

    # ------------------------------------------------------------------ opening and moving

    def _open_from_controls(self) -> int | None:
        if self.controls.images.value is None:
            raise ImageError("Choose a folder of images (or type a glob or a list file) under Images first.")
        return self.open(self.controls.images.value, self.controls.output.value)

    def open(self, inputs, output=None) -> int | None:
        """Open images (a folder, files, a glob or a list file; labels beside them or in ``output``)
        and show the first one without labels (the first image when all have labels).

        The labels of the image on screen are saved first. Returns the index shown.

        Raises:
            SamkitError: nothing to open, or the labels on screen could not be saved (then nothing changes).
        """
        series = ImageSeries.open(inputs, output)
        self.save()
        self.series, self.index, self.prepared = series, None, None
        start = series.first_unlabelled()
        if start is None:
            show_info(f"All {len(series)} images have labels; showing the first.")
        return self._show(0 if start is None else start)

    def next_image(self) -> int | None:
        """Save the labels and show the next image (on the last one: save only)."""
        series = self._require_series()
        if self.index + 1 >= len(series):
            saved = self.save()
            self._report(f"This is the last image ({len(series)} of {len(series)})"
                         + (f"; labels saved to {saved}." if saved else "."), level="info")
            return self.index
        return self.go_to(self.index + 1)

    def previous_image(self) -> int | None:
        """Save the labels and show the previous image (on the first one: save only)."""
        self._require_series()
        if self.index == 0:
            saved = self.save()
            self._report("This is the first image" + (f"; labels saved to {saved}." if saved else "."), level="info")
            return self.index
        return self.go_to(self.index - 1)

    def first_unlabelled(self) -> int | None:
        """Save the labels and show the first image without a labels file."""
        series = self._require_series()
        self.save()
        index = series.first_unlabelled()
        if index is None or index == self.index:
            self._report(f"All {len(series)} images have labels." if index is None else
                         "This is the first image without labels.", level="info")
            return self.index
        return self.go_to(index)

    def go_to(self, index: int) -> int | None:
        """Save the labels on screen, then show image ``index`` (from 0). If saving fails, nothing changes.

        Raises:
            SamkitError: the labels could not be saved, or image ``index`` cannot be read
                (then it is the current image, shown empty: move on to skip it).
        """
        series = self._require_series()
        if not 0 <= index < len(series):
            raise ImageError(f"There is no image {index + 1}: the series has {len(series)} images.")
        saved = self.save()
        self._show(index)
        if saved is not None:
            self.controls.status.value = f"Saved {saved.name}."
        return index

    def _require_series(self) -> ImageSeries:
        if self.series is None or self.index is None:
            raise ImageError("Open a folder of images first (Images, then Open).")
        return self.series

    def _show(self, index: int) -> int:
        """Replace the layers on screen by image ``index`` and its labels."""
        prepared, self.prepared = self._take_prepared(index), None
        self.index = index
        try:
            if prepared is None:
                prepared = self.series.prepare(index, channels_first=self.annotator.controls.channels_first.value)
        except SamkitError as error:
            self._remove_layers()
            self._set_counter(" (cannot be read)")
            raise type(error)(f"{error}\nPress Next ({key_text('next')}) to skip this image.") from None
        self._place(prepared)
        self._set_counter()
        self.controls.status.value = ""
        self._prefetch_next()
        return index

    def _take_prepared(self, index: int) -> PreparedImage | None:
        """The image prepared in the background if it is ``index``, read with the current channel setting."""
        prepared = self.prepared
        if prepared is None or prepared.index != index or prepared.path != self.series.images[index]:
            return None
        channels_first = bool(self.annotator.controls.channels_first.value)
        wanted = channel_axis_of(prepared.data, prepared.rgb, channels_first)
        return prepared if prepared.channel_axis == wanted else None

    def _place(self, prepared: PreparedImage) -> None:
        """Insert the image and labels layers under the annotator's own, hand them to it, drop the old ones."""
        old = [self.image_layer, self.labels_layer]
        name = prepared.path.stem
        image = Image(prepared.data, name=name, rgb=prepared.rgb, metadata={"napari_samkit_role": "series image"})
        labels = prepared.labels if prepared.labels is not None else np.zeros(prepared.shape, np.uint32)
        labels_layer = Labels(labels, name=f"{name}_labels", metadata={"napari_samkit_role": "series labels"})
        self.viewer.layers.insert(0, image)
        self.viewer.layers.insert(1, labels_layer)
        self._to_first_plane(len(prepared.shape))
        self.annotator.set_image_layer(image)
        self.annotator.reset_choices()
        self.annotator.controls.labels.value = labels_layer
        self.image_layer, self.labels_layer = image, labels_layer
        self._saved_labels = labels.copy()
        for layer in old:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.viewer.reset_view()

    def _to_first_plane(self, ndim: int) -> None:
        """Put the sliders of a stack's leading spatial axes at 0: the plane prepared in the background."""
        dims = self.viewer.dims
        for axis in range(dims.ndim - ndim, dims.ndim - 2):
            if dims.current_step[axis] != 0:
                dims.set_current_step(axis, 0)

    def _remove_layers(self) -> None:
        for layer in (self.image_layer, self.labels_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.image_layer = self.labels_layer = self._saved_labels = None

    def _set_counter(self, note: str = "") -> None:
        self.controls.counter.value = self.series.describe(self.index) + note

    # ------------------------------------------------------------------ saving

    def save(self):
        """Write the labels of the image on screen (unless empty with no file, or unchanged).

        Returns:
            The file written, or None.

        Raises:
            SamkitError: they could not be written (they stay in the layer).
        """
        if self.labels_layer is not None:
            self._warn_about_other_target()
        return self._write()

    def _write(self):
        """:meth:`save` without a word to the person (also when the viewer closes)."""
        if self.series is None or self.index is None or self.labels_layer is None:
            return None
        labels = np.asarray(self.labels_layer.data)
        path = self.series.save_labels(self.index, labels, original=self._saved_labels)
        if path is not None:
            self._saved_labels = labels.copy()
        return path

    def _save_and_say(self):
        path = self.save()
        self.controls.status.value = f"Saved {path}." if path else "Nothing to save (no change, or no objects)."
        return path

    def _warn_about_other_target(self) -> None:
        """Say so when the annotator commits into another labels layer: only the series' one is saved."""
        target = self.annotator.labels_layer
        if target is not None and target is not self.labels_layer and np.any(target.data):
            show_warning(f"Only '{self.labels_layer.name}' is saved by the image series; objects in "
                         f"'{target.name}' are not (choose '{self.labels_layer.name}' under Labels).")

    # ------------------------------------------------------------------ the next image, in the background

    def _prefetch_request(self):
        """What to prepare now: (index, model, precision, store folder, channels first), or None.

        Only once the annotator is ready on the image on screen, so the two encoders do not compete.
        """
        series, predictor = self.series, self.annotator.predictor
        if series is None or self.index is None or self.index + 1 >= len(series) or predictor is None:
            return None
        if self.image_layer is not None and not self.annotator.ready:
            return None
        store = self.annotator.controls.store.value
        return (self.index + 1, series.images[self.index + 1], predictor.model, predictor.precision,
                None if store is None else str(store), bool(self.annotator.controls.channels_first.value))

    def _prefetch_next(self) -> None:
        """Start preparing the next image when nothing else runs and it is not prepared yet."""
        if not self._lifetime or self._prefetch_running:
            return
        request = self._prefetch_request()
        if request is None or request == self._prefetch_done:
            return
        index, path, model, precision, store, channels_first = request
        self._prefetch_running = True

        def returned(prepared: PreparedImage) -> None:
            self._prefetch_done = request
            if request == self._prefetch_request():
                self.prepared = prepared

        def failed(error: BaseException) -> None:
            self._prefetch_done = request  # not again: moving there reads it and says what is wrong

        def finished() -> None:
            self._prefetch_running = False

        start_worker(self.series.prepare, index, model, precision, self.annotator.cache, store, channels_first,
                     path.stem, on_return=returned, on_error=failed,
                     on_finish=finished, lifetime=self._lifetime)

    @property
    def next_ready(self) -> bool:
        """True when the next image is read and its embedding is in the annotator's cache."""
        prepared = self.prepared
        return (prepared is not None and self.index is not None and prepared.index == self.index + 1
                and prepared.key is not None and prepared.key in self.annotator.cache)

    def wait_until_next_ready(self, timeout: float = 120.0) -> None:
        """Process Qt events until the annotator is ready on this image and the next one is prepared
        (or failed to be: moving there says why). For scripts and tests.

        Raises:
            SamkitError: the annotator's own error (model, embedding) on this image.
            TimeoutError: after ``timeout`` seconds.
        """
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout
        if self.image_layer is not None:
            self.annotator.wait_until_ready(timeout)
        while self._prefetch_running or self._prefetch_request() not in (None, self._prefetch_done):
            if time.monotonic() > deadline:
                raise TimeoutError(f"The next image was not prepared after {timeout} s.")
            self._prefetch_next()
            QApplication.processEvents()
            time.sleep(0.005)
