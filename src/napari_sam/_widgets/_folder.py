"""The automatic widget's 'Folder' section: segment every image of a folder, here or on a Dask cluster.

Thin: it reads the folders and the automatic widget's settings (model, precision,
prompts strategy, generator parameters) into a
:class:`~napari_sam.image_task.SegmentSettings`, runs
:func:`napari_sam.batch.segment_images` in a thread worker, shows its progress per
image and can cancel it (the images finished stay written; running it again does
the rest). No layer is changed; the label images go to the output folder with a
summary table.
"""

from __future__ import annotations

import threading

from magicgui.widgets import CheckBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info

from ..batch import FAILED, SUMMARY_NAME
from ..image_task import SegmentSettings
from ._jobs import start_worker


class FolderRun(Container):
    """Segment everything in every image of a folder with the automatic widget's settings.

    Args:
        settings: returns the :class:`SegmentSettings` and the loaded model (or None)
            of the automatic widget at the moment of the run (GUI thread).
        lifetime: the owning widget's :class:`~._jobs.Lifetime`.
        run_on: the widget's :class:`~._run_on.RunOn`: where the images go.
    """

    def __init__(self, settings, lifetime, run_on) -> None:
        super().__init__(labels=True, label="")
        self._settings = settings
        self._lifetime = lifetime
        self.run_on = run_on
        self._cancel = threading.Event()
        self._state = (0, 0, "")
        self.worker = None
        self.summary = None
        self.input = FileEdit(label="Image folder", mode="d", nullable=True, value=None,
                              tooltip="Every image in this folder is segmented (segment everything) with the settings "
                                      "above.")
        self.output = FileEdit(label="Output folder", mode="d", nullable=True, value=None,
                               tooltip="cells_017.tif -> cells_017_labels.tif here, with a summary table "
                                       f"{SUMMARY_NAME}. Images whose label image exists are skipped: run again "
                                       "after a cancel to finish.")
        self.recursive = CheckBox(text="include sub-folders", value=False)
        self.overwrite = CheckBox(text="redo images already done", value=False)
        self.run_button = PushButton(text="Segment folder")
        self.cancel_button = PushButton(text="Cancel folder", enabled=False,
                                        tooltip="Stop after the images in flight; finished label images stay.")
        self.progress = ProgressBar(label="", min=0, max=1, value=0)
        self.status = Label(label="", value="")
        self.status.native.setWordWrap(True)
        self.title = Label(label="", value="<b>Folder</b>: segment everything in every image of a folder")
        for widget in (self.recursive, self.overwrite, self.run_button, self.cancel_button):
            widget.label = ""
        self.extend([self.title, self.input, self.output, self.recursive, self.overwrite, self.run_button,
                     self.cancel_button, self.progress, self.status])
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._show_progress)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start segmenting the folder in a worker; returns it (None when an input is missing)."""
        if self.running:
            show_info("A folder run is in progress: wait for it or press Cancel folder.")
            return None
        if self.input.value is None or self.output.value is None:
            self._report("Choose the image folder and the output folder first.")
            return None
        problem = self.run_on.problem()
        if problem:
            self._report(problem)
            return None
        settings, model = self._settings()
        options = dict(recursive=self.recursive.value, overwrite=self.overwrite.value, cancel=self._cancel.is_set,
                       report=self._on_record)
        dask = self.run_on.dask()
        if dask is None:
            options["model"] = model
        elif "workers" in dask:
            options["workers"] = dask["workers"]
        else:
            options["client"] = dask["address"]
        self._cancel.clear()
        self._state = (0, 0, "")
        self.progress.value = 0
        self._set_running(True, f"Segmenting {self.input.value} on {self.run_on.text}…")
        self.worker = start_worker(_segment_folder, str(self.input.value), str(self.output.value), settings, options,
                                   on_return=self._on_done,
                                   on_error=lambda error: self._report(str(error)), on_finish=self._on_finish,
                                   lifetime=self._lifetime)
        return self.worker

    def cancel(self) -> None:
        if self.running:
            self._cancel.set()
            self.status.value = "Cancelling after the images in flight…"

    def _on_record(self, record, done: int, total: int) -> None:  # worker thread: only store
        self._state = (done, total, f"{record.path.rsplit('/', 1)[-1]}: {record.status}")

    def _show_progress(self) -> None:
        done, total, last = self._state
        if total:
            self.progress.max = total
            self.progress.value = done
            if not self._cancel.is_set():
                self.status.value = f"{done} of {total} images ({last})"

    def _set_running(self, running: bool, text: str) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.status.value = text
        (self._timer.start if running else self._timer.stop)()

    def _on_done(self, summary) -> None:
        self._timer.stop()
        self.summary = summary
        self._show_progress()
        self.status.value = summary.line()
        failed = [r for r in summary.records if r.status == FAILED]
        if failed:
            show_error(f"{len(failed)} image(s) failed, e.g. {failed[0].path}: {failed[0].error} (see "
                       f"{summary.table})")
        else:
            show_info(summary.line())

    def _on_finish(self) -> None:
        self.worker = None
        self._set_running(False, self.status.value)

    def _report(self, message: str) -> None:
        self.status.value = message.splitlines()[0][:160]
        show_error(message)


def _segment_folder(folder: str, output: str, settings: SegmentSettings, options: dict):
    """Worker body: the batch (a cancelled one returns its summary too)."""
    from ..batch import segment_images

    return segment_images(folder, output, settings, **options)
