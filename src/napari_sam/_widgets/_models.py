"""The annotator's model picker: registry names, checkpoint files, device; loads in the background."""

from __future__ import annotations

from collections.abc import Callable

from ._controls import LOAD_FILE, model_choices
from ._jobs import ModelLoader
from ._report import error_message


class ModelPicker:
    """Ties the Model and Device combo boxes to a background :class:`ModelLoader`.

    Args:
        model_box, device_box: the magicgui combo boxes.
        on_loaded: ``on_loaded(model)`` with the newest loaded model.
        report: ``report(message)`` for errors (shown as notifications).
        set_status: shows progress text in the widget.
        extra: checkpoint files offered besides the registry (the list the combo box reads).
        parent: Qt parent for the file dialog.
        lifetime: the widget's :class:`~napari_sam._widgets._jobs.Lifetime` (no result after it closed).
    """

    def __init__(self, model_box, device_box, on_loaded: Callable, report: Callable, set_status: Callable,
                 extra: list[str], parent=None, lifetime=None) -> None:
        self.model_box, self.device_box = model_box, device_box
        self.extra = extra
        self.current_choice = None  # the picker's value for the model in use
        self.current_name: str | None = None
        self._on_loaded, self._report, self._set_status, self._parent = on_loaded, report, set_status, parent
        self.loader = ModelLoader(self._loaded, self._failed, lifetime)
        model_box.changed.connect(self._on_choice)
        device_box.changed.connect(self._on_choice)

    def choices(self, _widget=None) -> list[tuple[str, str]]:
        return model_choices(self.extra)

    @property
    def busy(self) -> bool:
        return self.loader.busy

    def set_model(self, model, device: str | None = None) -> None:
        """A registry name or checkpoint path (loaded in a worker), or a loaded model (used at once)."""
        name = model.spec.name if hasattr(model, "spec") else str(model)
        if name not in [value for _, value in self.choices()]:
            self.extra.append(name)
        with self.model_box.changed.blocked(), self.device_box.changed.blocked():
            self.model_box.reset_choices()  # models of the user's own may be new since the last look
            self.model_box.value = name
            if device is not None:
                self.device_box.value = device
        if hasattr(model, "spec"):
            self.loader.generation += 1  # supersede a load in progress
            self.loader.loading = False
            self._loaded(model)
        else:
            self._load()

    def _on_choice(self, *_) -> None:
        if self.model_box.value != LOAD_FILE:
            self._load()
            return
        from qtpy.QtWidgets import QFileDialog

        path, _filter = QFileDialog.getOpenFileName(
            self._parent, "Segment Anything checkpoint", "", "Checkpoints (*.pth *.pt);;All files (*)"
        )
        if path:
            self.set_model(path)
        else:
            self._restore()

    def _load(self) -> None:
        name = self.model_box.value
        self._set_status(f"Loading model {name}…")
        self.loader.request(name, self.device_box.value)

    def _loaded(self, model) -> None:
        self.current_choice, self.current_name = self.model_box.value, model.spec.name
        self._on_loaded(model)

    def _failed(self, error: BaseException) -> None:
        still = "" if self.current_name is None else f"\nStill using {self.current_name}."
        self._report(error_message(error, f"loading model {self.model_box.value}") + still)
        self._restore()

    def _restore(self) -> None:
        if self.current_choice is not None:
            with self.model_box.changed.blocked():
                self.model_box.value = self.current_choice
