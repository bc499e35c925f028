"""Fine-tune: retrain the model on what was annotated in the viewer (the data engine's loop).

Thin by design: on the GUI thread it reads the chosen (image, labels) layer pairs
(or a folder) into :class:`~napari_sam.training.TrainingImage` planes; a napari
thread worker runs :func:`~napari_sam.training.fine_tune`; a timer shows its
progress (bar, status, chart of loss and validation IoU). Cancel stops after the
current step and keeps the best epoch as the model. When done, the new model is
selected in the annotator and the automatic widget of the same viewer.
"""

from __future__ import annotations

import threading
from dataclasses import fields

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ..registry import DEFAULT_MODEL, list_models
from ..store import STORE_HELP
from ..training.settings import FineTuneSettings, describe
from ._jobs import start_worker, stop_jobs_on_exit

#: Settings shown in the widget (all of them are in ``samkit train --help``).
SHOWN_SETTINGS = ("epochs", "learning_rate", "val_split", "point_fraction", "correction_rounds", "zoom")
#: Layers the annotator owns: never training data.
_OWN_LAYERS = ("SAM preview",)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def layer_pairs(layers) -> list[tuple[str, tuple]]:
    """``(text, (image_layer, labels_layer))``: each Labels layer with the image it annotates.

    The image is one of the same shape: the one whose name shares the longest start
    with the labels' name (``cells`` for ``cells labels``), else the last one added
    before the labels layer.
    """
    ordered = list(layers)
    out = []
    for position, labels in enumerate(ordered):
        if not isinstance(labels, Labels) or labels.name in _OWN_LAYERS:
            continue
        shape = tuple(labels.data.shape)
        candidates = [
            (index, image) for index, image in enumerate(ordered)
            if isinstance(image, Image) and tuple(image.data.shape[:-1] if image.rgb else image.data.shape) == shape
        ]
        if not candidates:
            continue
        _, _, image = max((_common_prefix(image.name, labels.name), index if index < position else -index, image)
                          for index, image in candidates)
        out.append((f"{labels.name} on {image.name}", (image, labels)))
    return out


def _train(items, name, base, settings, store, progress, cancel):
    """Worker body (off the GUI thread)."""
    from ..errors import SamkitError
    from ..training import fine_tune

    try:
        return fine_tune(items, name=name, base=base, settings=settings, embedding_store=store, progress=progress,
                         cancel=cancel, overwrite=False)
    except SamkitError as error:
        return error


def next_free_name(stem: str = "my-lab") -> str:
    """``my-lab-v1``, or the first ``-vN`` not taken by a user model."""
    taken = {spec.name for spec in list_models()}
    version = 1
    while f"{stem}-v{version}" in taken:
        version += 1
    return f"{stem}-v{version}"


class FineTuneWidget(Container):
    """Dock widget: fine-tune a model on annotated layers or a folder; the result is a named model.

    Args:
        napari_viewer: the viewer (napari passes it).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self._cancel = threading.Event()
        self._latest = None  # newest TrainingProgress, written by the worker thread

        self.pairs = Select(label="Annotated layers", choices=self._pair_choices,
                            tooltip="Labels layers to learn from, each with the image it annotates (same shape). "
                            "Stacks are used plane by plane (planes without objects are skipped).")
        self.folder = FileEdit(label="or a folder", mode="d", value="",
                               tooltip="A folder of images with their label images (cell.tif + cell_labels.tif), "
                               "used besides the layers.")
        self.base = ComboBox(label="Base model", choices=self._model_choices, value=DEFAULT_MODEL,
                             tooltip="Model to start from; a model of your own continues the data engine's loop.")
        self.name = LineEdit(label="New model name", value=next_free_name(),
                             tooltip="Letters, digits, '-', '_' or '.'; it must not exist yet.")
        self.store = FileEdit(label="Embedding store", mode="d", nullable=True, value=None,
                              tooltip=STORE_HELP + " The next round on the same images then skips the encoder.")
        self.settings: dict[str, object] = {}
        defaults = FineTuneSettings()
        for item in fields(FineTuneSettings):
            if item.name not in SHOWN_SETTINGS:
                continue
            value = getattr(defaults, item.name)
            tooltip = describe(item)
            if isinstance(value, bool):
                widget = CheckBox(text=item.name.replace("_", " "), value=value, tooltip=tooltip)
            elif isinstance(value, int):
                widget = SpinBox(label=item.name, value=value, min=int(item.metadata["low"]),
                                 max=int(min(item.metadata["high"], 100_000)), tooltip=tooltip)
            else:
                widget = FloatSpinBox(label=item.name, value=value, min=item.metadata["low"],
                                      max=item.metadata["high"], step=value / 10 or 0.05, tooltip=tooltip)
                if value < 0.01:
                    widget.native.setDecimals(6)
                    widget.value = value
            self.settings[item.name] = widget
        self.train_button = PushButton(text="Fine-tune", tooltip="Start training in the background.")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="Stop after the current step; the best epoch so far is saved.")
        self.progress = ProgressBar(label="", min=0, max=1000, value=0)
        self.status = Label(label="", value="")
        self.status.native.setWordWrap(True)
        from ._chart import TrainingChart

        self.chart = TrainingChart()
        for widget in (self.train_button, self.cancel_button):
            widget.label = ""
        self.extend([self.pairs, self.folder, self.base, self.name, self.store, *self.settings.values(),
                     self.train_button, self.cancel_button, self.progress, self.status])
        self.native.layout().addWidget(self.chart)
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._show_progress)
        self._lifetime = stop_jobs_on_exit(self.native, self._cancel.set)
        self._on_layers_changed()

    # ----------------------------------------------------------------- choices

    def _pair_choices(self, _widget=None) -> list:
        return layer_pairs(self.viewer.layers)

    @staticmethod
    def _model_choices(_widget=None) -> list:
        return [(f"{spec.name} ({spec.description[:40]})" if spec.local_path else spec.name, spec.name)
                for spec in list_models()]

    def _on_layers_changed(self, event=None) -> None:
        if self.running:
            return
        self.pairs.reset_choices()
        annotated = [value for _, value in self._pair_choices() if np.any(value[1].data)]
        self.pairs.value = annotated

    @property
    def running(self) -> bool:
        return self.worker is not None

    def current_settings(self) -> FineTuneSettings:
        values = {name: widget.value for name, widget in self.settings.items()}
        return FineTuneSettings().with_values(**values)

    # --------------------------------------------------------------------- run

    def training_images(self) -> list:
        """The chosen pairs (and folder) as training planes; read on the GUI thread."""
        from ..training import load_training_images, planes_of

        items = []
        for image_layer, labels_layer in self.pairs.value:
            image = np.asarray(image_layer.data[0] if image_layer.multiscale else image_layer.data)
            items += planes_of(image, np.asarray(labels_layer.data), f"{labels_layer.name} on {image_layer.name}")
        folder = str(self.folder.value or "")
        if folder not in ("", "."):
            items += load_training_images(folder)
        return items

    def start(self):
        """Start fine-tuning (returns the worker; errors are shown, nothing starts)."""
        from ..errors import SamkitError
        from ..user_models import check_model_name

        if self.running:
            return None
        try:
            settings = self.current_settings()
            name = check_model_name(self.name.value.strip())
            if name in {spec.name for spec in list_models()}:
                raise SamkitError(f"A model called {name!r} exists already: choose another name.")
            items = self.training_images()
            if not items:
                raise SamkitError("Nothing to learn from: choose annotated Labels layers (or a folder) with objects.")
        except SamkitError as error:
            self._report(str(error))
            return None
        self._cancel.clear()
        self._latest = None
        self.result = None
        self.chart.set_history([])
        self.progress.value = 0
        objects = sum(len(item.object_ids) for item in items)
        self._set_running(True, f"Fine-tuning {self.base.value} on {len(items)} plane(s), {objects} objects…")
        self.worker = start_worker(
            _train, items, name, self.base.value, settings, self.store.value, self._on_progress,
            self._cancel.is_set, on_return=self._on_done,
            on_error=self._on_error, on_finish=self._on_finish, lifetime=self._lifetime,
        )
        return self.worker

    def cancel(self) -> None:
        if self.running:
            self._cancel.set()
            self.status.value = "Cancelling after this step; the best epoch so far is kept…"

    def _on_progress(self, event) -> None:  # worker thread: only store
        self._latest = event

    def _show_progress(self) -> None:
        event = self._latest
        if event is None:
            return
        if event.stage == "embedding":
            fraction = 0.1 * event.step / max(event.steps, 1)
        else:
            done = max(event.epoch - 1, 0) + (event.step / max(event.steps, 1) if event.stage == "training" else 1)
            fraction = 0.1 + 0.9 * min(done / max(event.epochs, 1), 1.0) if event.epoch else 0.1
        self.progress.value = int(1000 * fraction)
        self.chart.set_history(event.history)
        if self._cancel.is_set():
            return
        if event.stage == "training":
            left = "" if event.seconds_left is None else f", about {event.seconds_left / 60:.1f} min left"
            self.status.value = f"Epoch {event.epoch}/{event.epochs}, step {event.step}/{event.steps}, " \
                                f"loss {event.loss:.4f}{left}"
        elif event.message:
            self.status.value = event.message

    def _set_running(self, running: bool, text: str) -> None:
        self.train_button.enabled = not running
        self.cancel_button.enabled = running
        self.status.value = text
        (self._timer.start if running else self._timer.stop)()

    def _on_done(self, outcome) -> None:
        self._timer.stop()
        from ..errors import SamkitError

        if isinstance(outcome, SamkitError):
            self._report(str(outcome))
            return
        self.result = outcome
        self.chart.set_history(outcome.history)
        self.progress.value = 1000
        first, best = outcome.history[0], outcome.best
        figures = ""
        if best.get("objects"):
            figures = (f" Validation IoU from a box {first['box_iou']:.3f} -> {best['box_iou']:.3f}, "
                       f"from one click {first['click_iou']:.3f} -> {best['click_iou']:.3f}.")
        text = f"Saved model '{outcome.name}' (epoch {outcome.best_epoch}, {outcome.stopped}).{figures}"
        if outcome.advice:
            text += " " + outcome.advice
        self.status.value = text
        (show_warning if outcome.advice else show_info)(text)
        self.name.value = next_free_name(outcome.name.rsplit("-v", 1)[0] if "-v" in outcome.name else outcome.name)
        self.base.reset_choices()
        select_model_in_viewer(self.viewer, outcome.name)

    def _on_error(self, error: BaseException) -> None:
        self._report(f"Fine-tuning failed: {type(error).__name__}: {error}")

    def _on_finish(self) -> None:
        self.worker = None
        self._set_running(False, self.status.value if "…" not in self.status.value else "")

    def _report(self, message: str) -> None:
        self.status.value = message.splitlines()[0][:160]
        show_error(message)


def select_model_in_viewer(viewer, name: str) -> list:
    """Select model ``name`` in every annotator and automatic widget docked in ``viewer``; return them."""
    from .annotator import AnnotatorWidget
    from .automatic import AutomaticSegmentationWidget

    widgets = []
    try:
        docked = list(viewer.window.dock_widgets.values())
    except AttributeError:  # an older napari: no public mapping of dock widgets
        return widgets
    for widget in docked:  # the inner widgets: magicgui containers or their Qt widgets
        candidate = widget if hasattr(widget, "native") else getattr(widget, "_magic_widget", widget)
        if isinstance(candidate, (AnnotatorWidget, AutomaticSegmentationWidget)):
            candidate.set_model(name)
            widgets.append(candidate)
    return widgets
