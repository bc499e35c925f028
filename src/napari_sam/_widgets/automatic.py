"""Automatic segmentation: segment everything, refine boxes or rough labels, edge maps.

Thin by design: it reads the chosen layers into a
:class:`~napari_sam.automatic.planes.StackRequest` on the GUI thread, runs
:func:`~napari_sam.automatic.planes.segment_stack` (and the model load) in a napari
thread worker, and adds the result as a NEW layer named after the image, the mode
and the model. Existing layers are never modified; a cancelled or failed run adds
nothing. Errors become napari notifications with the core's message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning

from ..automatic.parameters import AMG_PARAMETERS, STRATEGIES
from ..automatic.planes import (
    LINKS,
    MODES,
    STRATEGY_HELP,
    StackRequest,
    boxes_from_shapes,
    check_rough_labels,
    effective_strategy,
    plane_indices,
    result_name,
    to_data_frame,
)
from ..errors import ImageError, PromptError, SamkitError
from ..registry import DEFAULT_MODEL, get_spec, is_known_model
from ..store import STORE_HELP
from ..tiles import TILING_PARAMETERS
from ._controls import LOAD_FILE, device_choices, model_choices
from ._jobs import start_worker, stop_jobs_on_exit

_PRECISIONS = [("default", "default"), ("float32 (exact)", "float32"), ("bfloat16 (faster encoder)", "bfloat16")]
_PRECISION_HELP = ("Image encoder precision. default: $NAPARI_SAMKIT_PRECISION, else auto (bfloat16 on CPUs with "
                   "native bfloat16 for checked models, else float32). bfloat16: about 1.5x faster there; masks differ "
                   "slightly (mean IoU 0.986-0.999 vs float32 on real images). float32: identical to Meta's code.")
_SOURCE_KIND = {"boxes": Shapes, "labels": Labels}


@dataclass
class Outcome:
    """What a worker returns (it never raises: errors travel as text)."""

    model: object = None
    result: np.ndarray | None = None
    error: str | None = None
    cancelled: bool = False
    parents: dict | None = None


def describe_error(error: BaseException) -> str:
    """A message a person can act on, for any exception of a run."""
    if isinstance(error, SamkitError):
        return str(error)
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return ("Out of memory during automatic segmentation: lower points_per_batch, use crop_n_layers 0, "
                "run on the current plane only, or choose the smaller lite_medsam model.")
    return f"Unexpected error during automatic segmentation: {type(error).__name__}: {error}"


def _run(request: StackRequest, model, name: str, device: str | None, progress, cancel, dask=None,
         settings=None) -> Outcome:
    """Worker body: load the model if needed, then segment (runs off the GUI thread).

    With ``dask`` (:meth:`~._run_on.RunOn.dask`), the planes run on that Dask cluster
    with the model of ``settings`` and no model is loaded here.
    """
    from ..automatic import Cancelled
    from ..automatic.planes import segment_stack
    from ..loading import load_model

    outcome = Outcome(model=model)
    try:
        if dask is not None:
            from ..cluster import connect

            client, cluster, threads = connect(dask.get("address"), dask.get("workers"))
            try:
                outcome.result = segment_stack(request, None, progress=progress, cancel=cancel, client=client,
                                               worker_settings=settings, worker_threads=threads)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
        else:
            if outcome.model is None:
                outcome.model = load_model(name, device=device)
            if cancel():
                raise Cancelled()
            outcome.result = segment_stack(request, outcome.model, progress=progress, cancel=cancel)
        if request.mode == "everything" and request.link != "none":
            from ..automatic.planes import link_planes_of

            linked = link_planes_of(outcome.result, request.link, request.planes)
            outcome.result, outcome.parents = linked.labels, linked.parents
    except Cancelled:
        outcome.cancelled = True
    except Exception as error:  # noqa: BLE001 - reported to the person
        outcome.error = describe_error(error)
    return outcome


def _model_name(choice: str) -> str:
    """The name of a model choice that was not loaded here (it ran on Dask workers)."""
    from pathlib import Path

    return get_spec(choice).name if is_known_model(choice) else Path(choice).stem


class AutomaticSegmentationWidget(Container):
    """Dock widget: segment everything / refine boxes / refine labels / edge map -> a new layer.

    Args:
        napari_viewer: the viewer (napari passes it).
        model: registry name or checkpoint path (loaded on the first run), or a loaded model.
        device: torch device (default CPU).
    """

    def __init__(self, napari_viewer, model=DEFAULT_MODEL, device: str | None = None) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.worker = None
        self.last_layer = None
        self._models: dict = {}  # (model choice, device) -> loaded model
        self._extra_models: list[str] = []
        self._cancel = threading.Event()
        self._progress_state = (0.0, 1)
        self._model_choice = None

        self.image = ComboBox(label="Image", choices=lambda _w: self._layer_choices(Image),
                              tooltip="Image layer to segment: 2D gray or RGB, or a stack (Z/T, Y, X) plane by plane.")
        self.mode = ComboBox(label="Mode", choices=[(text, key) for key, text in MODES.items()],
                             tooltip="segment everything: find every object (a new Labels layer).\n"
                             "refine boxes: one object per rectangle of a Shapes layer (rectangle i -> label i).\n"
                             "refine a rough Labels layer: each object is re-segmented by the model, same ids.\n"
                             "edge map: zero-shot edges from the masks (a new Image layer).")
        self.source = ComboBox(label="Source", choices=self._source_choices,
                               tooltip="Stage 2 input: the Shapes layer with rectangles, or the rough Labels layer.")
        self.use_mask_prompt = CheckBox(text="rough masks as mask prompts", value=False,
                                        tooltip="Also give each rough object's pixels to the model as a mask "
                                        "prompt (SAM models; LiteMedSAM was trained without).")
        self.model = ComboBox(label="Model", choices=lambda _w: model_choices(self._extra_models),
                              tooltip="Segment Anything model. lite_medsam is embedded (boxes only: 'auto' uses box "
                              "proposals); vit_b / vit_t use Meta's point grid (downloaded on first use).")
        self.device = ComboBox(label="Device", choices=device_choices(), tooltip="Where the model runs.")
        self.precision = ComboBox(label="Precision", choices=_PRECISIONS,
                                  tooltip=_PRECISION_HELP)
        self.strategy = ComboBox(label="Prompts", choices=STRATEGIES, value="auto", tooltip=STRATEGY_HELP)
        self.store = FileEdit(label="Embedding store", mode="d", nullable=True, value=None, tooltip=STORE_HELP)
        self.params: dict[str, SpinBox | FloatSpinBox | ComboBox] = {}
        for name, p in AMG_PARAMETERS.items():
            if p.choices:
                self.params[name] = ComboBox(label=name, choices=p.choices, value=p.default,
                                             tooltip=f"{p.tooltip} (default {p.default})")
                continue
            kind = SpinBox if p.kind is int else FloatSpinBox
            self.params[name] = kind(label=name, value=p.default, min=p.minimum, max=p.maximum, step=p.step,
                                     tooltip=f"{p.tooltip} (default {p.default:.4g})")
        self.tiling: dict[str, SpinBox] = {
            name: SpinBox(label=name, value=p.default, min=p.minimum, max=p.maximum, step=p.step,
                          tooltip=p.tooltip)
            for name, p in TILING_PARAMETERS.items()
        }
        self.params["crop_overlap_ratio"].native.setDecimals(4)
        self.params["crop_overlap_ratio"].value = AMG_PARAMETERS["crop_overlap_ratio"].default
        self.link = ComboBox(label="Link planes", choices=[(text, key) for key, text in LINKS.items()],
                             value="none", tooltip="For a stack: link the objects of consecutive planes (along the "
                             "first axis) into 3D objects, or into tracks with divisions (and a Tracks layer).")
        self.current_plane = CheckBox(text="current plane only", value=False,
                                      tooltip="Segment only the plane on screen; the result still has the stack's "
                                      "shape (other planes stay 0).")
        from ._run_on import RunOn

        self.run_on = RunOn()
        self.run_button = PushButton(text="Run", tooltip="Start; the result becomes a new layer.")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="Stop the run; no layer is added or changed.")
        self.progress = ProgressBar(label="", min=0, max=1000, value=0)
        self.status = Label(label="", value="")
        self.status.native.setWordWrap(True)
        for widget in (self.use_mask_prompt, self.current_plane, self.run_button, self.cancel_button):
            widget.label = ""
        self.extend([self.image, self.mode, self.source, self.use_mask_prompt, self.model, self.device,
                     self.precision, self.strategy, self.store, *self.params.values(), *self.tiling.values(),
                     self.link, self.current_plane, *self.run_on.widgets,
                     self.run_button, self.cancel_button, self.progress, self.status])

        self.mode.changed.connect(self._update_visibility)
        self.image.changed.connect(self._update_visibility)
        self.model.changed.connect(self._on_model_choice)
        self.strategy.changed.connect(self._update_visibility)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        from ._folder import FolderRun
        from ._jobs import Lifetime

        self._lifetime = Lifetime()
        self.folder = FolderRun(self.segment_settings, self._lifetime, self.run_on)
        self.append(self.folder)
        stop_jobs_on_exit(self.native, lambda: (self._cancel.set(), self.folder.cancel()), self._lifetime)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._on_layers_changed)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self.set_model(model, device)
        self._on_layers_changed()

    # ------------------------------------------------------------------ choices

    def _layer_choices(self, kind, _widget=None) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, kind)]

    def _source_choices(self, _widget=None) -> list:
        kind = _SOURCE_KIND.get(self.mode.value)
        return [] if kind is None else self._layer_choices(kind)

    def _on_layers_changed(self, event=None) -> None:
        self.image.reset_choices()
        if self.image.value is None and self.image.choices:
            self.image.value = self.image.choices[-1]
        self._update_visibility()

    def _spec(self):
        """The registry entry of the chosen model (None for a checkpoint file not loaded yet)."""
        loaded = self._models.get((self.model.value, self.device.value))
        if loaded is not None:
            return loaded.spec
        return get_spec(self.model.value) if is_known_model(self.model.value) else None

    def _update_visibility(self, *_) -> None:
        mode = self.mode.value
        self.source.reset_choices()
        self.source.visible = mode in _SOURCE_KIND
        self.source.label = {"boxes": "Shapes", "labels": "Rough labels"}.get(mode, "Source")
        self.use_mask_prompt.visible = mode == "labels"
        automatic = mode in ("everything", "edges")
        self.strategy.visible = automatic
        spec = self._spec()
        grid = spec is None or effective_strategy(self.strategy.value, spec) == "points"
        for name, widget in self.params.items():
            widget.visible = automatic
            widget.enabled = AMG_PARAMETERS[name].used_by("points" if grid else "boxes")
        for widget in self.tiling.values():
            widget.visible = mode == "everything"
        self._show_thresholds_used(grid)
        layer = self.image.value
        stack = layer is not None and len(self._spatial_shape(layer)) > 2
        self.current_plane.visible = stack
        self.link.visible = stack and mode == "everything"

    def _show_thresholds_used(self, grid: bool) -> None:
        """Show the IoU and stability thresholds the strategy really uses: the box strategy replaces
        Meta's defaults (0.88 / 0.95, tuned for point grids) with its own; values you typed stay."""
        from ..automatic.box_strategy import effective_thresholds

        meta = (AMG_PARAMETERS["pred_iou_thresh"].default, AMG_PARAMETERS["stability_score_thresh"].default)
        boxes = effective_thresholds(None, None)
        shown, wanted = (boxes, meta) if grid else (meta, boxes)
        for name, old, new in zip(("pred_iou_thresh", "stability_score_thresh"), shown, wanted):
            widget = self.params[name]
            if abs(widget.value - old) < 1e-9:
                widget.value = new

    @staticmethod
    def _spatial_shape(layer) -> tuple[int, ...]:
        shape = tuple(layer.data.shape if not layer.multiscale else layer.data[0].shape)
        return shape[:-1] if layer.rgb else shape

    # ------------------------------------------------------------------ model

    def set_model(self, model, device: str | None = None) -> None:
        """Use a registry name or checkpoint path (loaded on the next run) or a loaded model."""
        if device is not None:
            self.device.value = device
        name = model.spec.name if hasattr(model, "spec") else str(model)
        if name not in [v for _, v in model_choices(self._extra_models)]:
            self._extra_models.append(name)
        with self.model.changed.blocked():
            self.model.reset_choices()  # models of the user's own may be new since the last look
        if hasattr(model, "spec"):
            self._models[(name, self.device.value)] = model
        with self.model.changed.blocked():
            self.model.value = name
        self._model_choice = name
        self._update_visibility()

    def _on_model_choice(self, *_) -> None:
        if self.model.value == LOAD_FILE:
            from qtpy.QtWidgets import QFileDialog

            path, _filter = QFileDialog.getOpenFileName(
                self.native, "Segment Anything checkpoint", "", "Checkpoints (*.pth *.pt);;All files (*)")
            if not path:
                with self.model.changed.blocked():
                    self.model.value = self._model_choice
                return
            self.set_model(path)
            return
        self._model_choice = self.model.value
        self._update_visibility()

    # ------------------------------------------------------------------ reading the viewer

    def parameter_values(self) -> dict:
        """The generator parameters shown (a default shown rounded is Meta's exact default)."""
        values = {}
        for name, widget in self.params.items():
            p, value = AMG_PARAMETERS[name], widget.value
            if p.choices:
                values[name] = value
                continue
            decimals = widget.native.decimals() if p.kind is float else 0
            values[name] = p.default if abs(value - p.default) <= 0.5 * 10.0**-decimals else value
        return values

    def tiling_values(self) -> dict:
        """``tile`` and ``halo`` shown (None: the model's default)."""
        return {name: widget.value or None for name, widget in self.tiling.items()}

    def segment_settings(self):
        """``(SegmentSettings, loaded model or None)``: the settings shown, for a folder run (segment everything)
        and for the Dask workers (which load the model they name)."""
        from ..image_task import SegmentSettings

        settings = SegmentSettings(model=self.model.value, device=self.device.value, mode="auto",
                                   strategy=self.strategy.value,
                                   precision=None if self.precision.value == "default" else self.precision.value,
                                   amg=self.parameter_values(), **self.tiling_values())
        return settings, self._models.get((self.model.value, self.device.value))

    def build_request(self) -> StackRequest:
        """Read the layers into a request (GUI thread).

        Raises:
            SamkitError: no image, a missing or unusable source layer.
        """
        layer = self.image.value
        if layer is None:
            raise ImageError("Add an image layer and choose it under 'Image' first.")
        data = layer.data[0] if layer.multiscale else layer.data
        shape = self._spatial_shape(layer)
        current = layer.world_to_data(self.viewer.dims.point) if self.current_plane.value else None
        mode = self.mode.value
        request = StackRequest(
            image=data, mode=mode, planes=plane_indices(shape, current), rgb=bool(layer.rgb),
            params=self.parameter_values(), strategy=self.strategy.value, use_mask_prompt=self.use_mask_prompt.value,
            precision=None if self.precision.value == "default" else self.precision.value,
            store=None if self.store.value is None else str(self.store.value), image_name=layer.name,
            link=self.link.value if mode == "everything" and len(shape) > 2 else "none",
            levels=list(layer.data) if layer.multiscale and len(shape) == 2 else None, **self.tiling_values(),
        )
        source = self.source.value if mode in _SOURCE_KIND else None
        if mode in _SOURCE_KIND and source is None:
            what = "a Shapes layer with rectangles" if mode == "boxes" else "a Labels layer with rough objects"
            raise PromptError(f"Mode '{MODES[mode]}' needs {what}: add one and choose it under '{self.source.label}'.")
        if mode == "boxes":
            vertices = [to_data_frame(v, source.scale, source.translate, layer.scale, layer.translate)
                        for v in source.data]
            request.boxes = boxes_from_shapes(vertices, source.shape_type, shape)
        elif mode == "labels":
            check_rough_labels(source.data.shape, shape, name=f"The labels of {source.name!r}")
            request.rough_labels = np.array(source.data, copy=True)  # the user may paint during the run
        return request

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start a run in a worker; returns it (None when the inputs are wrong: see the notification)."""
        if self.running:
            show_info("A run is in progress: wait for it or press Cancel.")
            return None
        try:
            request = self.build_request()
        except Exception as error:  # noqa: BLE001
            self._report(describe_error(error))
            return None
        spec = self._spec()
        if request.mode in ("everything", "edges") and spec is not None and not spec.supports_points \
                and request.strategy == "points":
            show_warning(f"{spec.name} was trained on boxes only: a point grid gives poor masks. "
                         "Choose 'auto' or 'boxes' under Prompts.")
        problem = self.run_on.problem()
        if problem:
            self._report(problem)
            return None
        key = (self.model.value, self.device.value)
        layer = self.image.value
        dask = self.run_on.dask()
        self._cancel.clear()
        self._progress_state = (0.0, max(1, len(request.planes)))
        self.progress.value = 0
        text = f"Running '{MODES[request.mode]}' on {len(request.planes)} plane(s)…"
        if request.mode == "everything" and spec is not None:
            from ..tiles import TileGrid

            grid = TileGrid.for_model(self._spatial_shape(layer)[-2:], spec, request.tile, request.halo)
            if not grid.single:
                text = (f"Segmenting everything in {len(grid)} tiles of {grid.tile} px per plane (a {grid.halo} px "
                        "halo); Cancel keeps the embeddings finished in the store…")
        if dask is not None:
            text = (f"Sending {len(request.planes)} plane(s) to the {self.run_on.text} (each plane is a task; the "
                    "workers load the model once)…")
        self._set_running(True, text)
        self.worker = start_worker(
            _run, request, self._models.get(key), key[0], key[1], self._on_progress, self._cancel.is_set, dask,
            self.segment_settings()[0],
            on_return=lambda outcome: self._on_done(outcome, request, layer, key),
            on_finish=self._on_finish, lifetime=self._lifetime,
        )
        return self.worker

    def cancel(self) -> None:
        """Ask the running worker to stop (it stops at its next check; nothing is added)."""
        if self.running:
            self._cancel.set()
            self.status.value = "Cancelling…"

    def _on_progress(self, done: float, total: int) -> None:  # worker thread: only store
        self._progress_state = (done, total)

    def _show_progress(self) -> None:
        done, total = self._progress_state
        self.progress.value = int(1000 * min(done / max(total, 1), 1.0))
        if not self._cancel.is_set() and total > 1:
            self.status.value = f"Plane {min(int(done) + 1, total)} of {total}…"

    def _set_running(self, running: bool, text: str) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.status.value = text
        (self._timer.start if running else self._timer.stop)()

    def _on_done(self, outcome: Outcome, request: StackRequest, image_layer, key) -> None:
        self._timer.stop()  # no progress text may overwrite the outcome
        if outcome.model is not None:
            self._models[key] = outcome.model
        if outcome.cancelled:
            self.status.value = "Cancelled: no layer was added or changed."
            show_info("Automatic segmentation cancelled: no layer was added or changed.")
            return
        if outcome.error is not None:
            self._report(outcome.error)
            return
        model_name = outcome.model.spec.name if outcome.model is not None else _model_name(key[0])
        name = result_name(image_layer.name, request.mode, model_name)
        kwargs = dict(name=name, scale=image_layer.scale, translate=image_layer.translate,
                      metadata={"napari_samkit": {"mode": request.mode, "model": model_name,
                                                  "planes": request.planes}})
        if request.mode == "edges":
            self.last_layer = self.viewer.add_image(outcome.result, colormap="magma", blending="additive",
                                                    contrast_limits=(0.0, 1.0), **kwargs)
            text = f"Added edge map '{self.last_layer.name}'."
        else:
            self.last_layer = self.viewer.add_labels(outcome.result, **kwargs)
            count = np.unique(outcome.result).size - int((outcome.result == 0).any())
            text = f"Added '{self.last_layer.name}' with {count} object(s)."
            if request.link == "tracks" and count:
                from ..linking import tracks_data

                self.tracks_layer = self.viewer.add_tracks(
                    tracks_data(outcome.result), graph={c: [p] for c, p in (outcome.parents or {}).items()},
                    name=f"{name} tracks", scale=image_layer.scale, translate=image_layer.translate)
                text += f" Tracks layer with {len(outcome.parents or {})} division children."
        self.progress.value = 1000
        self.status.value = text

    def _on_finish(self) -> None:
        self.worker = None
        self._set_running(False, self.status.value if "…" not in self.status.value else "")

    def _report(self, message: str) -> None:
        self.status.value = message.splitlines()[0][:120]
        show_error(message)
