"""The annotator's stack tools: segment through a stack, embed every plane, preview in 3D, commit.

Thin: it reads the annotator's current object (its preview masks, or a committed
label picked in the labels layer), runs :func:`napari_sam.propagation.propagate_stack`
or :meth:`napari_sam.stack.PlaneStack.embed_planes` in a napari worker with a
progress bar and Cancel, shows the propagated objects in a full-size preview
layer ('SAM stack preview': scroll the slider or press Ctrl+Y for 3D), and on
commit writes them with :func:`napari_sam.annotation.commit_stack` in one undo step.

Correction: box or click the object again on any plane of the preview and
segment through the stack again: only the planes after that one (away from where
the object started) are propagated again; the others stay.
"""

from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton

from ..annotation import commit_stack
from ..errors import Cancelled, ImageError, PromptError
from ..propagation import PROPAGATION_PARAMETERS
from ..stack import PlaneStack
from ._jobs import start_worker

STACK_PREVIEW_NAME = "SAM stack preview"
#: Key of "Segment through stack" (viewer-wide).
PROPAGATE_KEY = "Shift-P"


def _propagate(stack, model, precision, zoom, cache, store, index, masks, logits, ids, directions, settings, progress,
               cancel):
    """Worker body: a predictor of its own (the preview's stays on the plane on screen), then propagation."""
    from ..predictor import Predictor
    from ..propagation import propagate_stack

    predictor = Predictor(model, precision=precision, zoom=zoom, cache=cache)
    objects = propagate_stack(stack, predictor, index, masks, logits=logits, directions=directions,
                              settings=settings, cache=cache, store=store, progress=progress, cancel=cancel)
    return objects, ids, directions


def _embed_all(stack, model, precision, cache, store, progress, cancel):
    for _ in stack.embed_planes(model, precision=precision, cache=cache, store=store, progress=progress,
                                cancel=cancel):
        pass
    return len(stack)


class StackTools:
    """The stack section of the annotator (its widgets are added to ``container``)."""

    def __init__(self, annotator, container: Container) -> None:
        self.annotator = annotator
        self.objects: list = []  # PropagatedObject per object in the stack preview
        self.ids: list[int | None] = []  # the committed label each object came from, or None
        self.axis: int | None = None  # spatial axis of the preview
        self._stack: PlaneStack | None = None  # the stack the preview objects were propagated in
        self._correcting: int | None = None  # the preview object a running propagation corrects
        self.preview_layer = None
        self.worker = None
        self._cancel = threading.Event()
        self._progress = (0, 1)
        self.axis_choice = ComboBox(label="Through", choices=self._axis_choices,
                                    tooltip="The axis to segment through: depth (z) in a volume, time in a "
                                    "time-lapse. Objects keep one id along it.")
        self.settings = {
            name: FloatSpinBox(label=name, value=p.default, min=p.minimum, max=p.maximum, step=p.step,
                               tooltip=f"{p.tooltip} (default {p.default:g})")
            for name, p in PROPAGATION_PARAMETERS.items()
        }
        self.zoom = CheckBox(text="zoom on small objects", value=False,
                             tooltip="Answer each plane from a zoomed window around the object (LiteMedSAM): "
                             "one encoder run per plane (about 0.6 s) instead of the plane's embedding (0.05 s "
                             "per plane once embedded). Measured on a HeLa time-lapse: mean IoU 0.78 zoomed, "
                             "0.76 not.")
        self.propagate_button = PushButton(
            text=f"Segment through stack [{PROPAGATE_KEY.replace('-', '+')}]",
            tooltip="Propagate the object(s) of this plane (the preview, or the committed label selected in the "
            "labels layer) plane by plane both ways; on a plane of an earlier result: only onwards (a correction). "
            "Commit writes every plane with one id per object.")
        self.embed_button = PushButton(text="Embed every plane",
                                       tooltip="Compute the embeddings of all planes now (kept in memory and in the "
                                       "store), so that moving the slider and propagation do not wait.")
        self.discard_button = PushButton(text="Discard stack preview", tooltip="Drop the propagated objects.")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop; nothing is changed.")
        self.progress = ProgressBar(label="", min=0, max=1000, value=0)
        self.info = Label(value="")
        self.info.native.setWordWrap(True)
        for widget in (self.zoom, self.propagate_button, self.embed_button, self.discard_button, self.cancel_button):
            widget.label = ""
        self.section = Container(widgets=[self.axis_choice, *self.settings.values(), self.zoom, self.propagate_button,
                                          self.embed_button, self.discard_button, self.cancel_button, self.progress,
                                          self.info], labels=True)
        container.append(self.section)
        self.propagate_button.clicked.connect(lambda: annotator._gui(self.segment_through_stack))
        self.embed_button.clicked.connect(lambda: annotator._gui(self.embed_every_plane))
        self.discard_button.clicked.connect(lambda: annotator._gui(self.discard))
        self.cancel_button.clicked.connect(self.cancel)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(container.native)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)

    # ------------------------------------------------------------------ state

    def _axis_choices(self, _widget=None) -> list:
        geometry = self.annotator._geometry
        if geometry is None:
            return []
        names = self.annotator.viewer.dims.axis_labels
        offset = len(names) - geometry.ndim
        def text(a: int) -> str:
            name = str(names[a + offset])
            return f"axis {a}" if name.lstrip("-").isdigit() else f"axis {a} ({name})"

        return [(text(a), a) for a in geometry.plane_axes]

    def refresh(self) -> None:
        """The image or the displayed axes changed: update the choices and what can be used."""
        self.axis_choice.reset_choices()
        geometry = self.annotator._geometry
        usable = geometry is not None and bool(geometry.plane_axes)
        self.section.visible = usable
        if usable and self.axis_choice.value is None:
            self.axis_choice.value = geometry.plane_axes[-1]

    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def has_result(self) -> bool:
        return bool(self.objects)

    def stack(self) -> PlaneStack:
        a = self.annotator
        geometry = a._require_plane()
        axis = self.axis_choice.value
        if axis is None or axis not in geometry.plane_axes:
            raise ImageError("This image has no plane axis to segment through: open a volume or a time-lapse.")
        frame = a._frame
        names = a.viewer.dims.axis_labels
        label = str(names[axis + len(names) - geometry.ndim])[:1].upper()
        return PlaneStack(frame.layer.data, geometry, axis, frame.rgb, frame.channel_axis, a._signature,
                          kind=label if label in ("Z", "T") else "Z")

    def _settings(self) -> dict:
        return {name: float(w.value) for name, w in self.settings.items()}

    # ------------------------------------------------------------------ actions

    def segment_through_stack(self) -> None:
        """Propagate the current object(s) through the stack in a worker (see the module docstring)."""
        a = self.annotator
        if self.running:
            raise PromptError("Propagation or embedding is running: wait for it or press Cancel.")
        if not a.ready:
            raise PromptError("The plane's embedding is not ready yet: wait a moment.")
        stack = self.stack()
        index = stack.index
        masks, logits, ids = self._start_objects(stack)
        directions = (1, -1)
        correcting = None
        if self.has_result and self.axis == stack.axis:
            correcting = self._corrected_object(index, masks)
        if correcting is not None:
            start = self.objects[correcting].start
            directions = ((1,) if index > start else (-1,)) if index != start else (1, -1)
            self._correcting = correcting
        else:
            self._correcting = None
            if self.axis != stack.axis:
                self.discard()
        self._start(_propagate, stack, a.predictor.model, a.predictor.precision, bool(self.zoom.value), a.cache,
                    a._store_in_use(), index,
                    masks, logits, ids, directions, self._settings(), self._on_progress, self._cancel.is_set,
                    desc="Segment through stack", on_return=lambda result: self._on_propagated(stack, result))

    def _start_objects(self, stack):
        """Masks on this plane to propagate: the preview's, else the selected committed label's."""
        a = self.annotator
        if len(a.preview_masks) and a.preview_masks.any():
            chosen = a.choice.indices() if a.choice is not None else [0] * len(a._predictions)
            logits = [p.low_res_logits[i] for p, i in zip(a._predictions, chosen)]
            keep = [k for k in range(len(a.preview_masks)) if a.preview_masks[k].any()]
            return [a.preview_masks[k] for k in keep], [logits[k] for k in keep], [None] * len(keep)
        layer = a.labels_layer
        if layer is not None:
            label = int(layer.selected_label)
            plane = stack.geometry.read(layer.data)
            if label and (plane == label).any():
                return [plane == label], [None], [label]
        raise PromptError("Nothing to segment through the stack: box or click the object on this plane first "
                          "(or select a committed label in the labels layer on a plane where it is).")

    def _corrected_object(self, index: int, masks) -> int | None:
        """The preview object that the first new mask covers on this plane (a correction), or None."""
        from ..propagation import RegionMask

        new = RegionMask.of(masks[0])
        best, which = 0.0, None
        for j, obj in enumerate(self.objects):
            if index in obj.masks:
                overlap = new.iou(obj.masks[index])
                if overlap > best:
                    best, which = overlap, j
        return which if best >= 0.2 else None

    def _on_propagated(self, stack, result) -> None:
        objects, ids, directions = result
        if self._correcting is not None and len(objects) == 1:
            j = self._correcting
            for direction in directions:
                self.objects[j].replace_after(objects[0].start, direction, objects[0])
            self.objects[j].masks[objects[0].start] = objects[0].masks[objects[0].start]
        else:
            self.objects += objects
            self.ids += ids
        self.axis = stack.axis
        self._stack = stack
        self._paint()
        a = self.annotator
        a.prompts.clear_plane(stack.geometry)  # the prompts became the stack preview
        a.memory.clear()
        a.update_preview()
        self.info.value = self.describe()
        a.controls.set_status(f"{len(self.objects)} object(s) through the stack: check the preview "
                              f"(slider, or Ctrl+Y for 3D), then commit.")

    def describe(self) -> str:
        lines = []
        for j, obj in enumerate(self.objects):
            planes = obj.planes
            why = "; ".join(f"{'up' if d == 1 else 'down'}: {obj.stops[d]}" for d in sorted(obj.stops, reverse=True))
            lines.append(f"Object {j + 1}: planes {planes[0]}-{planes[-1]} ({len(planes)}). Stopped {why}.")
        return "\n".join(lines)

    def _paint(self) -> None:
        a = self.annotator
        frame = a._frame
        if self.preview_layer is None or self.preview_layer not in a.viewer.layers \
                or self.preview_layer.data.shape != frame.shape:
            if self.preview_layer is not None and self.preview_layer in a.viewer.layers:
                a.viewer.layers.remove(self.preview_layer)
            self.preview_layer = a.viewer.add_labels(np.zeros(frame.shape, np.uint16), name=STACK_PREVIEW_NAME,
                                                     opacity=0.5, **frame.layer_kwargs())
            self.preview_layer.editable = False
            self.preview_layer.metadata["napari_samkit_role"] = "stack preview"
            a._select_prompt_layer()
        data = np.zeros(frame.shape, np.uint16)
        for j, obj in enumerate(self.objects):
            for k, region in obj.masks.items():
                geometry = self._stack.at(k)
                plane = geometry.read(data).copy()
                window = plane[region.slices]
                window[region.mask & (window == 0)] = j + 1
                geometry.write(data, plane)
        self.preview_layer.data = data

    def commit(self, layer, mode: str):
        """Write the stack preview into ``layer`` (one undo step); returns the :class:`StackCommit`."""
        result = commit_stack(layer.data, self._stack.at, [o.masks for o in self.objects], mode, ids=self.ids)
        if len(result.values):
            with layer.block_history():
                layer.data_setitem(result.indices, result.values)
        self.discard()
        return result

    def discard(self) -> None:
        """Drop the propagated objects (committed labels are not touched)."""
        self.objects, self.ids = [], []
        a = self.annotator
        if self.preview_layer is not None and self.preview_layer in a.viewer.layers:
            a.viewer.layers.remove(self.preview_layer)
        self.preview_layer = None
        self.info.value = ""

    def embed_every_plane(self) -> None:
        """Compute every plane's embedding along the chosen axis, in a worker (found ones are skipped)."""
        a = self.annotator
        if self.running:
            raise PromptError("Propagation or embedding is running: wait for it or press Cancel.")
        if a.predictor is None:
            raise PromptError("The model is still loading.")
        stack = self.stack()
        self._start(_embed_all, stack, a.predictor.model, a.predictor.precision, a.cache, a._store_in_use(),
                    self._on_progress, self._cancel.is_set, desc="Embedding every plane",
                    on_return=lambda n: a.controls.set_status(f"All {n} planes are embedded."))

    # ------------------------------------------------------------------ worker plumbing

    def _start(self, function, *args, desc: str, on_return) -> None:
        self._cancel.clear()
        self._progress = (0, 1)
        self.progress.value = 0
        self.propagate_button.enabled = self.embed_button.enabled = False
        self.cancel_button.enabled = True
        self._timer.start()
        self.annotator.controls.set_status(f"{desc}…")
        self.worker = start_worker(function, *args, on_return=on_return, on_error=self._on_error,
                                   on_finish=self._on_finish, lifetime=self.annotator._lifetime)

    def _on_error(self, error: BaseException) -> None:
        from ._report import error_message

        if isinstance(error, Cancelled):
            self.annotator.controls.set_status("Cancelled: nothing was changed.")
            return
        self.annotator._report(error_message(error, "segmenting through the stack"))

    def _on_finish(self) -> None:
        self.worker = None
        self._timer.stop()
        self.progress.value = 1000
        self.propagate_button.enabled = self.embed_button.enabled = True
        self.cancel_button.enabled = False

    def _on_progress(self, done: int, total: int) -> None:  # worker thread: only store
        self._progress = (done, total)

    def _show_progress(self) -> None:
        done, total = self._progress
        self.progress.value = int(1000 * min(done / max(total, 1), 1.0))

    def cancel(self) -> None:
        """Stop the running propagation or embedding at its next plane."""
        self._cancel.set()

    def wait(self, timeout: float = 300.0) -> None:
        """Process Qt events until no stack job runs (for scripts and tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"The stack job did not finish in {timeout} s.")
            QApplication.processEvents()
            time.sleep(0.005)
