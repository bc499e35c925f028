"""The annotator's controls: magicgui widgets, keyboard shortcuts and their texts.

Kept apart from the behaviour (:mod:`.annotator`) so the layout reads in one place.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton

from ..annotation import COMMIT_MODES, DEFAULT_COMMIT_MODE
from ..registry import list_models
from ..store import STORE_HELP

#: Action -> napari key binding (viewer-wide except ``toggle_label``, bound on the points layer).
SHORTCUTS = {
    "commit": "Shift-C",
    "next_mask": "N",
    "clear": "Shift-X",
    "undo": "Shift-U",
    "toggle_label": "T",
}
LOAD_FILE = "load checkpoint file…"
NEW_LABELS = "new layer"


def key_text(action: str) -> str:
    """The shortcut as people read it, e.g. ``Shift+C``."""
    return SHORTCUTS[action].replace("-", "+")


def model_choices(extra_paths: list[str]) -> list[tuple[str, str]]:
    """Registry models (with their prompt types), loaded files, and the file entry."""
    choices = []
    for spec in list_models():
        kinds = "boxes; clicks by box search" if not spec.supports_points else "points + boxes"
        where = "embedded" if spec.embedded_in else "download"
        choices.append((f"{spec.name} ({kinds}, {where})", spec.name))
    choices += [(path, path) for path in extra_paths]
    choices.append((LOAD_FILE, LOAD_FILE))
    return choices


def device_choices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


class Controls:
    """All widgets of the annotator, added to ``container`` in display order."""

    def __init__(self, container: Container, image_choices, labels_choices, model_choices_fn) -> None:
        self.image = ComboBox(
            label="Image", choices=image_choices, nullable=True,
            tooltip="Image layer to segment: 2D gray, RGB, multichannel, or the current plane of a stack.",
        )
        self.channels_first = CheckBox(
            text="first axis holds channels", value=False, visible=False,
            tooltip="Tick if the image's first axis holds channels (the first three become red, green, blue).",
        )
        self.model = ComboBox(
            label="Model", choices=model_choices_fn,
            tooltip="Segment Anything model. lite_medsam is embedded and fast (trained on boxes: "
            "clicks become box prompts); vit_b / vit_t take clicks natively (downloaded on first use).",
        )
        self.device = ComboBox(label="Device", choices=device_choices(), tooltip="Where the model runs.")
        self.store = FileEdit(label="Embedding store", mode="d", nullable=True, value=None, tooltip=STORE_HELP)
        self.hint = Label(value="")
        self.status = Label(value="Loading model…")
        self.point_label = PushButton(
            text=f"Next click: positive [{key_text('toggle_label')}]",
            tooltip=f"Label of the next point in 'SAM points': positive (green) or negative (red). "
            f"Press {key_text('toggle_label')} in the points layer to toggle; Ctrl+click or right click "
            "adds a negative point.",
        )
        self.next_mask = PushButton(
            text=f"Next mask [{key_text('next_mask')}]",
            tooltip=f"Cycle the candidate masks of a click (whole, part, subpart; small / medium / large "
            f"for lite_medsam) "
            f"({key_text('next_mask')}). The best by predicted IoU is shown first.",
        )
        self.mask_info = Label(value="")
        self.labels = ComboBox(
            label="Labels", choices=labels_choices,
            tooltip="Labels layer that receives committed objects (a new 'SAM labels' layer by default).",
        )
        self.mode = ComboBox(
            label="Commit", choices=[(text.split(":")[0], key) for key, text in COMMIT_MODES.items()],
            value=DEFAULT_COMMIT_MODE,
            tooltip="\n".join(COMMIT_MODES.values()),
        )
        self.commit = PushButton(
            text=f"Commit [{key_text('commit')}]",
            tooltip=f"Write the preview into the labels layer with new ids ({key_text('commit')}).",
        )
        self.undo = PushButton(
            text=f"Undo commit [{key_text('undo')}]",
            tooltip=f"Undo the last change of the labels layer ({key_text('undo')}; "
            "Ctrl+Z in the labels layer does the same).",
        )
        self.clear = PushButton(
            text=f"Clear prompts [{key_text('clear')}]",
            tooltip=f"Remove the points and boxes of this plane ({key_text('clear')}); committed labels stay.",
        )
        for widget in (self.point_label, self.next_mask, self.commit, self.undo, self.clear, self.hint,
                       self.status, self.mask_info, self.channels_first):
            widget.label = ""
        from qtpy.QtWidgets import QSizePolicy

        for text in (self.hint, self.status, self.mask_info):
            text.native.setWordWrap(True)
            text.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        container.native.setMaximumWidth(460)
        container.extend([
            self.image, self.channels_first, self.model, self.device, self.store, self.hint, self.status,
            self.point_label, self.next_mask, self.mask_info, self.labels, self.mode,
            self.commit, self.undo, self.clear,
        ])

    def set_status(self, text: str) -> None:
        self.status.value = text
        self.status.native.updateGeometry()


def on_undock(widget, callback) -> None:
    """Call ``callback()`` once when a docked Qt ``widget`` is taken out of its dock.

    napari's close button on a dock widget removes the widget from the window
    (``setParent(None)``) without deleting it; this is the moment to let go of the viewer.
    """
    from qtpy.QtCore import QEvent, QObject

    class _Watcher(QObject):
        docked = False

        def eventFilter(self, watched, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.ParentChange:
                if watched.parent() is not None:
                    self.docked = True
                elif self.docked:
                    watched.removeEventFilter(self)  # once: no Python filter left on a loose widget
                    callback()
            return False

    watcher = _Watcher(widget)
    widget.installEventFilter(watcher)
