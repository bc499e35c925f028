"""The interactive annotator: box or click an object, see the mask, commit it to labels.

Thin by design: it reads layers, calls :mod:`napari_sam.annotation` and the
:class:`~napari_sam.predictor.Predictor`, and writes layers. Embeddings and model
loading run in thread workers (:mod:`._jobs`); the mask decoder runs on the GUI
thread while it is fast (under :data:`SYNC_PREVIEW_SECONDS`), else in a worker too.

Everything a person does with the mouse is a method here (see docs/annotator.md).
The public methods raise :class:`~napari_sam.errors.SamkitError` on bad input; the
buttons, keys and layer events show the same errors as napari notifications.
"""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import Container
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from ..annotation import MaskChoice, commit_masks
from ..embedding import EmbeddingCache, image_signature
from ..errors import ImageError, PromptError, SamkitError
from ..interactive import RefinementMemory, needs_encoder
from ..registry import DEFAULT_MODEL
from ..source import PlaneSource, is_large
from . import _layers as L
from ._commit import commit_message, write_objects
from ._controls import NEW_LABELS, SHORTCUTS, Controls, model_choices, on_undock
from ._jobs import EmbeddingJobs, LatestJobs, Lifetime, _predict, stop_jobs_on_exit
from ._models import ModelPicker
from ._prompts import PromptLayers
from ._report import error_message, notify_errors
from ._stack import PROPAGATE_KEY, StackTools

#: Previews slower than this (seconds, the last one measured) are computed in a worker.
SYNC_PREVIEW_SECONDS = 0.1


class AnnotatorWidget(Container):
    """Dock widget: prompts in 'SAM points' / 'SAM boxes' -> live preview -> committed labels.

    Args:
        napari_viewer: the viewer (napari passes it).
        model: registry name or checkpoint path to load first, or a loaded model.
        device: torch device (default CPU).
    """

    def __init__(self, napari_viewer, model=DEFAULT_MODEL, device: str | None = None) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.cache = EmbeddingCache()
        self.predictor = None
        self.memory = RefinementMemory()
        self.choice: MaskChoice | None = None
        self.preview_masks = np.zeros((0, 0, 0), bool)  # K x h x w, the masks shown over preview_region
        self.preview_region: tuple | None = None  # (x0, y0, x1, y1) of the plane they cover
        self._painted: tuple | None = None  # (rows, cols) of the preview pixels drawn on a large plane
        self.last_preview_seconds: float | None = None
        self.preview_layer = None
        self._frame: L.ImageFrame | None = None
        self._geometry = None
        self._wanted_key = self._ready_key = None
        self._signature = self._store = None  # the image's signature; the EmbeddingStore in use
        self._plane_source: tuple = (None, None, None, None)  # (key, plane, channel axis, channels) on screen
        self._last_error: str | None = None
        self._watched_image = None
        self._commits: list[tuple] = []  # (labels layer, prompts taken) per commit, for undo
        self._targets: dict[int, object] = {}  # image layer id -> the labels layer it was committed to
        self._lifetime = Lifetime()  # over when the widget is closed: no result is shown then
        self._jobs = EmbeddingJobs(self._on_embedding, self._on_embedding_error, cache=self.cache,
                                   lifetime=self._lifetime)
        self._previews = LatestJobs(self._on_preview_result,
                                    lambda error: self._report(error_message(error, "predicting the preview")),
                                    self._lifetime)
        self._prompt_version = self._shown_version = 0  # changes of the prompts, and the one shown
        self.prompts = PromptLayers(self.viewer, self._on_prompts_changed, lambda: self._gui(self.toggle_point_label),
                                    SHORTCUTS["toggle_label"])
        model_files: list[str] = []  # checkpoint files chosen so far, shared with the picker
        self.controls = c = Controls(self, self._image_choices, self._labels_choices,
                                     lambda _widget: model_choices(model_files))
        self.models = ModelPicker(c.model, c.device, self._on_model_loaded, self._report, c.set_status,
                                  model_files, self.native, self._lifetime)
        self.stack_tools = StackTools(self, self)
        c.image.changed.connect(self._on_image_changed)
        c.channels_first.changed.connect(self._on_image_changed)
        c.store.changed.connect(lambda *_: self._gui(self._on_store_changed))
        c.point_label.clicked.connect(lambda: self._gui(self.toggle_point_label))
        c.next_mask.clicked.connect(lambda: self._gui(self.cycle_mask))
        c.commit.clicked.connect(lambda: self._gui(self.commit))
        c.undo.clicked.connect(lambda: self._gui(self.undo_commit))
        c.clear.clicked.connect(lambda: self._gui(self.clear_prompts))
        self._connections = [(self.viewer.layers.events.inserted, self._on_layers_changed),
                             (self.viewer.layers.events.removed, self._on_layers_changed)]
        self._connections.append((L.camera(self.viewer).events.zoom, self._on_zoom))
        self._connections += [(event, self._on_dims) for event in (
            self.viewer.dims.events.current_step, self.viewer.dims.events.ndisplay, self.viewer.dims.events.order)]
        for event, handler in self._connections:
            event.connect(handler)
        actions = {"commit": self.commit, "next_mask": self.cycle_mask, "clear": self.clear_prompts,
                   "undo": self.undo_commit}
        for action, method in actions.items():
            self.viewer.bind_key(SHORTCUTS[action], lambda _viewer, m=method: self._gui(m), overwrite=True)
        self.viewer.bind_key(PROPAGATE_KEY, lambda _viewer: self._gui(self.segment_through_stack), overwrite=True)
        on_undock(self.native, self.disconnect_viewer)
        stop_jobs_on_exit(self.native, self._stop_jobs, self._lifetime)
        self.set_model(model, device)
        self._on_layers_changed()
        if self.image_layer is None:
            self._on_image_changed()

    def disconnect_viewer(self, *_) -> None:
        """Stop reacting to the viewer: events, shortcuts, background jobs (called when the
        dock widget is closed; open a new annotator from the Plugins menu to continue)."""
        for event, handler in self._connections:
            event.disconnect(handler)
        self._connections = []
        for action in ("commit", "next_mask", "clear", "undo"):
            self.viewer.bind_key(SHORTCUTS[action], None)
        self.viewer.bind_key(PROPAGATE_KEY, None)
        if self._watched_image is not None:
            self._watched_image.events.data.disconnect(self._on_image_data)
            self._watched_image = None
        self._stop_jobs()

    def _stop_jobs(self) -> None:
        """Drop every waiting embedding and preview (a running encoder finishes; nothing is applied)."""
        self._jobs.cancel()
        self._previews.cancel()
        self.stack_tools.cancel()

    # ------------------------------------------------------------------ reporting

    def _report(self, message: str, level: str = "error") -> None:
        self._last_error = message if level == "error" else self._last_error
        self.controls.set_status(message.splitlines()[0][:120])
        {"error": show_error, "warning": show_warning, "info": show_info}[level](message)

    def _gui(self, method):
        """Run a public method from a button or key: errors become notifications."""
        try:
            return method()
        except Exception as error:  # noqa: BLE001
            self._report(error_message(error, method.__name__.replace("_", " ")))
            return None

    # ------------------------------------------------------------------ layer pickers

    def _image_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _widget=None):
        """'new layer', and the Labels layers that lie on the image pixel for pixel."""
        if self._frame is None:
            return [(NEW_LABELS, NEW_LABELS)]
        return [(NEW_LABELS, NEW_LABELS)] + [
            (layer.name, layer) for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer is not self.preview_layer and L.placed_like(layer, self._frame)
        ]

    @property
    def image_layer(self):
        return self.controls.image.value

    @property
    def points_layer(self):
        """The 'SAM points' layer (positive / negative clicks, feature ``label``)."""
        return self.prompts.points

    @property
    def boxes_layer(self):
        """The 'SAM boxes' Shapes layer (each rectangle is one object)."""
        return self.prompts.boxes

    @property
    def labels_layer(self):
        """The target Labels layer, or None until the first commit creates one."""
        value = self.controls.labels.value
        return None if value == NEW_LABELS else value

    def _on_layers_changed(self, event=None) -> None:
        if self.prompts.missing() or (self.preview_layer is not None and self.preview_layer not in self.viewer.layers):
            from qtpy.QtCore import QTimer

            self._show([])  # nothing from a deleted layer is committed
            QTimer.singleShot(0, self._restore_own_layers)  # not inside the layer list's own event
        self.reset_choices()
        if self.controls.image.value is None and self._image_choices():
            self.controls.image.value = self._image_choices()[-1][1]

    def _on_zoom(self, event=None) -> None:
        """Keep box outlines a few screen pixels wide at any zoom (13 px wide data edges hid small cells)."""
        boxes = self.boxes_layer
        if boxes is None or boxes not in self.viewer.layers:
            return
        width = L.box_edge_width(L.camera(self.viewer).zoom, float(boxes.scale[-1]))
        boxes.current_edge_width = width
        if len(boxes.data):
            boxes.edge_width = [width] * len(boxes.data)

    def _restore_own_layers(self) -> None:
        """Make the prompt and preview layers again after the user deleted one (not while closing)."""
        if not self._lifetime or self._frame is None or self._frame.layer not in self.viewer.layers:
            return
        if self.prompts.missing():
            self.prompts.ensure(self._frame)
        if not L.matches(self.preview_layer, self.viewer, self._frame.ndim):
            self.preview_layer = L.make_preview_layer(self.viewer, self._frame)
        self._select_prompt_layer()
        self.update_preview()

    def set_image_layer(self, layer) -> None:
        """Annotate ``layer`` (an Image layer or its name)."""
        layer = self.viewer.layers[layer] if isinstance(layer, str) else layer
        if self.controls.image.value is layer:
            self._on_image_changed()
        self.controls.image.value = layer

    @notify_errors("setting up the image")
    def _on_image_changed(self, *_):
        layer = self.controls.image.value
        self._frame = self._geometry = self._wanted_key = self._signature = None
        self._jobs.cancel()
        if layer is None:
            self.controls.set_status("Add an image layer (File > Open, or drag a file in) to start.")
            return
        c = self.controls
        c.channels_first.visible = not layer.rgb and layer.data.ndim >= 3
        self._frame = frame = L.ImageFrame(layer, channels_first=c.channels_first.value)
        self.prompts.ensure(frame)
        if not L.matches(self.preview_layer, self.viewer, frame.ndim):
            L.discard(self.viewer, self.preview_layer)
            self.preview_layer = L.make_preview_layer(self.viewer, frame)
        self.preview_layer.scale = frame.scale
        if self._watched_image is not None:
            self._watched_image.events.data.disconnect(self._on_image_data)
        self._watched_image = layer
        layer.events.data.connect(self._on_image_data)
        self.reset_choices()
        self._on_zoom()
        target = self._targets.get(id(layer))  # the labels this image was committed to, else a new layer
        usable = target is not None and target in self.viewer.layers and L.placed_like(target, frame)
        c.labels.value = target if usable else NEW_LABELS
        self._select_prompt_layer()
        self._on_dims()

    def _select_prompt_layer(self) -> None:
        """Make the points layer active, in its adding mode: every model takes clicks."""
        if self.points_layer is None:
            return
        self.viewer.layers.selection.active = self.points_layer
        self.points_layer.mode = "add"

    # ------------------------------------------------------------------ model

    def set_model(self, model, device: str | None = None) -> None:
        """Use a model: a registry name or checkpoint path (loaded in the background, see
        :meth:`wait_until_ready`), or an already loaded :class:`~napari_sam.models.sam.SamModel`."""
        self.models.set_model(model, device)

    def _on_model_loaded(self, model) -> None:
        from ..predictor import Predictor

        self.predictor = Predictor(model, cache=self.cache)
        self._last_error = None
        spec = model.spec
        self.controls.hint.value = (
            f"{spec.name}: click in '{L.POINTS_NAME}' (P) and/or draw boxes in '{L.BOXES_NAME}' (R)."
            + ("" if spec.supports_points else
               " Trained on boxes: clicks become the box prompts that explain them, three sizes (N).")
        )
        self.memory.clear()
        self._wanted_key = None
        self._select_prompt_layer()
        if self._frame is None:
            self.controls.set_status(f"{spec.name} loaded. Add an image layer (File > Open) to start.")
        self._on_dims()

    # ------------------------------------------------------------------ planes and embeddings

    def _on_image_data(self, *_) -> None:
        self._wanted_key = self._signature = None  # the pixels changed: hash the image again
        self._on_dims()

    @notify_errors("changing the plane")
    def _on_dims(self, *_):
        if self._frame is None or self.predictor is None:
            return
        try:
            geometry = self._frame.geometry(self.viewer)
        except ImageError as error:
            if self._geometry is not None:
                self._report(str(error), level="warning")
            self._geometry = None
            return
        if geometry == self._geometry and self._wanted_key is not None:
            return  # same plane, same data: nothing to hash or compute
        frame = self._frame
        source = self._plane_source_of(geometry)
        channels = source.channels
        key = source.key(0, self.predictor.model, self.predictor.precision)
        plane = self._lazy_plane(geometry, source)
        if plane is None:
            plane = source.plane(0)
        if key == self._wanted_key and geometry == self._geometry:
            return
        plane_moved = self._geometry is None or geometry.plane_index != self._geometry.plane_index
        displayed_changed = self._geometry is None or geometry.displayed != self._geometry.displayed
        self._geometry, self._wanted_key = geometry, key
        if displayed_changed:
            self.stack_tools.refresh()
        if plane_moved or key != self._ready_key:
            self._previews.cancel()
            self.memory.clear()
            self._show([])
        axis = -1 if frame.channel_axis is not None and not isinstance(plane, PlaneSource) else None
        self._plane_source = (key, plane, axis, channels)  # zoomed windows are cut from it (Predictor.zoom)
        store = self._embedding_store(key)
        embedding = self._jobs.request(key, self.predictor.model, plane, axis, channels, store=store)
        if embedding is not None:
            self._on_embedding(key, embedding)
        else:
            self._ready_key = None
            plane = ", ".join(map(str, geometry.plane_index))
            self.controls.set_status(f"Computing the image embedding{f' of plane {plane}' if plane else ''}…")

    def _plane_source_of(self, geometry):
        """The plane on screen as a one-plane :class:`~napari_sam.stack.PlaneStack`: its pixels, channels
        and embedding key (the image is hashed once, again when its data change)."""
        from ..stack import PlaneStack

        layer, frame = self._frame.layer, self._frame
        if self._signature is None:
            self._signature = image_signature(layer.data[0] if layer.multiscale else layer.data)
        return PlaneStack(layer.data, geometry, None, frame.rgb, frame.channel_axis, self._signature)

    def _lazy_plane(self, geometry, stack):
        """A large 2D image (or a multiscale one) as a :class:`~napari_sam.source.PlaneSource` read window by
        window (the annotator never loads it whole); None for every other image (its plane is read)."""
        layer, frame = self._frame.layer, self._frame
        if frame.ndim != 2 or geometry.transposed or not (layer.multiscale or is_large(geometry.plane_shape)):
            return None
        data = list(layer.data) if layer.multiscale else layer.data
        return PlaneSource(data, channel_axis=frame.channel_axis, channels=stack.channels,
                           signature=stack.with_signature().signature)

    def _store_in_use(self):
        """The embedding store of the current image, or None when the store setting is empty."""
        return self._store if self.controls.store.value is not None else None

    def _embedding_store(self, key):
        """The :class:`~napari_sam.store.EmbeddingStore` of the store setting for this image, or None."""
        folder = self.controls.store.value
        if folder is None:
            return None
        from ..store import EmbeddingStore, store_in_folder

        path = store_in_folder(folder, key, self._frame.layer.name)
        if self._store is None or self._store.path != path:
            self._store = EmbeddingStore(path, cache=self.cache)
        return self._store

    def _on_store_changed(self) -> None:
        """A store folder was chosen: keep the plane on screen there too (later planes are written as computed)."""
        if self.ready and self.predictor.embedding is not None:
            store = self._embedding_store(self._ready_key)
            if store is not None and store.get(self._ready_key, memory=False) is None:
                store.put(self.predictor.embedding)
            self.predictor.store = store

    def _on_embedding(self, key, embedding) -> None:
        if key != self._wanted_key or self.predictor is None:
            return
        source_key, plane, axis, channels = self._plane_source
        if source_key == key:
            self.predictor.set_embedding(embedding, image=plane, channel_axis=axis, channels=channels)
        else:
            self.predictor.set_embedding(embedding)
        self.predictor.store = self._store if self.controls.store.value is not None else None
        self._ready_key = key
        self._last_error = None
        plane = self._geometry.plane_index
        where = f" (plane {', '.join(map(str, plane))})" if plane else ""
        self.controls.set_status(f"Ready{where}: add prompts.")
        self._gui(self.update_preview)

    def _on_embedding_error(self, error: BaseException) -> None:
        self._report(error_message(error, "computing the image embedding"))

    @property
    def ready(self) -> bool:
        """True when the current plane's embedding is set (prompts give a preview at once)."""
        return self._ready_key is not None and self._ready_key == self._wanted_key

    def wait_until_ready(self, timeout: float = 120.0) -> None:
        """Process Qt events until the model and the current plane's embedding are ready
        and no background job (embedding, slow preview) is running. For scripts: call it
        after changing the prompt layers, before reading the preview.

        Raises:
            SamkitError: with the message of a failed model load or embedding.
            TimeoutError: after ``timeout`` seconds.
        """
        from qtpy.QtWidgets import QApplication

        if self._frame is None and not self.models.busy:
            raise ImageError("Select an image layer first (set_image_layer).")
        deadline = time.monotonic() + timeout
        while self.models.busy or self._jobs.busy or self._previews.busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"The annotator was not ready after {timeout} s ({self.controls.status.value}).")
            QApplication.processEvents()
            time.sleep(0.005)
        if not self.ready:  # nothing runs any more: the last error says why
            raise SamkitError(self._last_error or f"The annotator is not ready: {self.controls.status.value}")

    # ------------------------------------------------------------------ prompts -> preview

    def _on_prompts_changed(self, event=None) -> None:
        """A prompt layer changed: preview on the GUI thread if the decoder is fast, else in a worker."""
        self._prompt_version += 1
        if not self.ready:
            return
        fast = (self.last_preview_seconds or 0.0) < SYNC_PREVIEW_SECONDS
        if str(getattr(event, "action", "changed")) == "changing" and not fast:
            return  # live updates while dragging only when the decoder keeps up
        try:
            objects = self._current_objects()
            encode = needs_encoder(self.predictor, objects)
        except Exception as error:  # noqa: BLE001
            self._report(error_message(error, "reading the prompts"))
            return
        if fast and not encode:
            self._gui(self.update_preview)
            return
        if encode:  # a part of the image not embedded yet: its encoder run goes to a worker
            self.controls.set_status("Computing the embedding of this part of the image…")
        self._previews.request((self._prompt_version, self._ready_key, objects),
                               _predict, self.predictor, objects, self.memory)

    def _on_preview_result(self, tag, result) -> None:
        version, key, objects = tag
        if key != self._ready_key:
            return
        predictions, self.last_preview_seconds = result
        self.choice = MaskChoice([p.iou_scores for p in predictions])
        self._show(objects, predictions)
        self._shown_version = version
        if self.controls.status.value.startswith("Computing the embedding of this part"):
            self.controls.set_status("Ready: add prompts.")

    def _current_objects(self):
        return self.prompts.objects(self._geometry)

    def update_preview(self) -> np.ndarray:
        """Predict masks from the prompts on the current plane and show them.

        Returns:
            The preview label plane ``H x W`` (object ``k`` has id ``k + 1``); all
            zeros without prompts or before the embedding is ready.
        """
        self._previews.cancel()
        self._shown_version = self._prompt_version
        if not self.ready or self.prompts.points is None:
            return self._show([])
        objects = self._current_objects()
        predictions, self.last_preview_seconds = _predict(self.predictor, objects, self.memory)
        self.choice = MaskChoice([p.iou_scores for p in predictions])
        return self._show(objects, predictions)

    def _show(self, objects, predictions=()) -> np.ndarray:
        """Write the chosen masks to the preview layer; remember their logits for refinement.

        The masks cover :attr:`preview_region`: the whole plane, or on a large image the
        union of the objects' regions (only those pixels of the preview layer are redrawn).
        """
        self._objects, self._predictions = list(objects), list(predictions)
        if self._geometry is None:
            self.preview_masks = np.zeros((0, 0, 0), bool)
            return self.preview_masks
        h, w = self._geometry.plane_shape
        large = self.predictor is not None and self.predictor.large
        region = (0, 0, w, h)
        if not self._predictions:
            self.choice = None
            if large:
                region = (0, 0, 0, 0)
            self.preview_masks = np.zeros((0, region[3] - region[1], region[2] - region[0]), bool)
        else:
            chosen = self.choice.indices()
            if large:
                boxes = np.array([p.region for p in self._predictions])
                region = (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()),
                          int(boxes[:, 3].max()))
            masks = np.zeros((len(chosen), region[3] - region[1], region[2] - region[0]), bool)
            for k, (p, i) in enumerate(zip(self._predictions, chosen)):
                x0, y0, x1, y1 = p.region
                masks[k, y0 - region[1]:y1 - region[1], x0 - region[0]:x1 - region[0]] = p.masks[i]
            self.preview_masks = masks
            for obj, p, i in zip(self._objects, self._predictions, chosen):
                self.memory.remember(obj, p.low_res_logits[i])
        self.preview_region = region
        plane = commit_masks(np.zeros(self.preview_masks.shape[1:], np.uint16), self.preview_masks,
                             "fill_background", 1).plane
        if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            if large:
                self._draw_region(plane, region)
            else:
                L.place_preview(self.preview_layer, self._frame, self._geometry)
                self._geometry.write(self.preview_layer.data, plane, collapsed=True)
                self.preview_layer.refresh()
        self.controls.mask_info.value = self.choice.describe() if self.choice else ""
        coarse = self.predictor.last_coarse if self.predictor is not None and self._predictions else None
        if coarse:
            self.controls.set_status(f"A prompt this large is answered from a view of the whole image {coarse:.0f}x "
                                     "smaller: its outline is coarse. Box a smaller part to see it at full resolution.")
        return plane

    def _draw_region(self, plane: np.ndarray, region: tuple) -> None:
        """Redraw only the preview pixels that change (a large plane is never redrawn whole)."""
        layer = self.preview_layer
        if layer.data.shape != L.preview_shape(self._frame):
            L.place_preview(layer, self._frame, self._geometry)
            self._painted = None
        with layer.block_history():
            if self._painted is not None:
                rows, cols = self._painted
                layer.data_setitem((rows, cols), 0)
            rows, cols = np.nonzero(plane)
            rows, cols = rows + region[1], cols + region[0]
            if len(rows):
                layer.data_setitem((rows, cols), plane[rows - region[1], cols - region[0]])
        self._painted = (rows, cols) if len(rows) else None

    def cycle_mask(self) -> str:
        """Show the next candidate mask (whole / part / subpart); returns its description."""
        if self.choice is None:
            raise PromptError("No preview yet: draw a box or click an object first.")
        if not self.choice.cycle():
            show_info(f"{self.predictor.spec.name} returns one mask per prompt; there is nothing to cycle.")
        self._show(self._objects, self._predictions)
        return self.choice.describe()

    def toggle_point_label(self) -> str:
        """Switch the label of the next points between positive and negative; returns it."""
        label = L.NEGATIVE if self.prompts.next_label == L.POSITIVE else L.POSITIVE
        self.prompts.set_next_label(label)
        self.controls.point_label.text = f"Next click: {label} [{SHORTCUTS['toggle_label']}]"
        return label

    # ------------------------------------------------------------------ scripting helpers

    def _require_plane(self):
        if self._geometry is None or self.prompts.points is None:
            raise ImageError("Select an image layer (and a 2D view) first.")
        return self._geometry

    def add_points(self, coords, positive: bool = True) -> None:
        """Add points ``N x 2`` ``(row, col)`` on the current plane (or ``N x D`` image coordinates)."""
        self.prompts.add_points(self._require_plane(), coords, positive)

    def add_boxes(self, boxes) -> None:
        """Add boxes ``N x 4`` ``(row0, col0, row1, col1)`` on the current plane, all in one update."""
        self.prompts.add_boxes(self._require_plane(), boxes)

    def clear_prompts(self) -> None:
        """Remove the points and boxes of the current plane (committed labels are not touched)."""
        self.prompts.clear_plane(self._require_plane())
        self.memory.clear()
        self.update_preview()

    # ------------------------------------------------------------------ commit

    def segment_through_stack(self) -> None:
        """Propagate the current object(s) through the stack (in a worker; see :mod:`._stack`);
        :meth:`commit` then writes every plane. Scripts: call ``stack_tools.wait()`` after it."""
        self.stack_tools.segment_through_stack()

    def commit(self, mode: str | None = None) -> list[int]:
        """Write the preview objects into the labels layer with new ids; returns the ids written.

        With a stack preview (:meth:`segment_through_stack`), its objects are written
        on every plane, one id each, in one undo step.

        Args:
            mode: ``"fill_background"``, ``"keep"`` or ``"overwrite"`` (default: the
                widget's choice). Undo with :meth:`undo_commit` or Ctrl+Z in the layer.
        """
        if self._frame is None:
            raise ImageError("Select an image layer first.")
        if self.stack_tools.has_result:
            return self._commit_stack(mode or self.controls.mode.value)
        if self._shown_version != self._prompt_version:  # a slow preview still computing
            self.update_preview()
        if not len(self.preview_masks) or not self.preview_masks.any():
            raise PromptError("Nothing to commit: draw a box (or click) on the object first and wait for the preview.")
        layer = self._target_layer()
        region = None if self.preview_region == (0, 0, *self._geometry.plane_shape[::-1]) else self.preview_region
        result = write_objects(layer, self._geometry, self.preview_masks, mode or self.controls.mode.value, region)
        written = [o for o, i in zip(self._objects, result.ids) if i]
        taken = self.prompts.take(
            np.concatenate([o.point_indices for o in written]) if written else [],
            [o.box_index for o in written if o.box_index is not None],
        )
        if written:
            self._commits.append((layer, taken))
            self._targets[id(self._frame.layer)] = layer
        self.memory.clear()
        self.update_preview()
        self.controls.set_status(commit_message(layer.name, result))
        ids = result.written_ids.tolist()
        return ids

    def _target_layer(self):
        """The labels layer to commit to (a new one on the first commit)."""
        layer = self.labels_layer
        if layer is None:
            layer = L.make_labels_layer(self.viewer, self._frame)
            self.reset_choices()
            self.controls.labels.value = layer
            self._select_prompt_layer()
        if layer.data.shape != self._frame.shape:
            raise ImageError(f"Labels layer {layer.name!r} has shape {layer.data.shape}, the image needs "
                             f"{self._frame.shape}; choose 'new layer' under Labels.")
        return layer

    def _commit_stack(self, mode: str) -> list[int]:
        layer = self._target_layer()
        result = self.stack_tools.commit(layer, mode)
        ids = result.written_ids.tolist()
        if ids:
            self._commits.append((layer, None))
            self._targets[id(self._frame.layer)] = layer
        planes = sorted({p for written in result.planes for p in written})
        skipped = f" {len(result.skipped)} touched existing labels and were not written." if len(result.skipped) else ""
        self.controls.set_status(f"Committed {len(ids)} object(s) through planes {planes[0]}-{planes[-1]} to "
                                 f"'{layer.name}' (ids {', '.join(map(str, ids))}).{skipped}" if ids else
                                 f"Nothing was written: the objects touched existing labels.{skipped}")
        return ids

    def undo_commit(self) -> None:
        """Undo the last commit: its labels layer goes back one step and its prompts come back."""
        while self._commits and self._commits[-1][0] not in self.viewer.layers:
            self._commits.pop()  # that labels layer was deleted
        if not self._commits:
            raise PromptError("Nothing to undo: no commit of this session is left to undo.")
        layer, taken = self._commits.pop()
        layer.undo()
        if taken is not None and not self.prompts.missing():
            self.prompts.put_back(taken)  # the prompts come back: fix them and commit again
        self.controls.set_status(f"Undid the last commit into '{layer.name}'; its prompts are back.")
