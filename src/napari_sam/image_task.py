"""One image file in, one label image out: what ``samkit segment`` does for each input.

:class:`SegmentSettings` holds every choice of a run that is the same for all its
images (model, mode, strategy, precision, channels, stack axes, the automatic,
linking and propagation parameters); :class:`ImageTask` names one image's files
(input, prompts, outputs, embedding store). :func:`segment_file` reads the image,
segments it with a loaded model and writes its outputs; it never imports napari or
Qt, so it runs the same in the command line, a script and on a Dask worker.

The label image is written last and atomically: a label image that exists is
complete, with its overlay picture and tracks table already written. A batch
that finds it skips the image (see :mod:`napari_sam.batch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageError, PromptError
from .registry import DEFAULT_MODEL

#: Modes of ``samkit segment``: automatic, or from the prompts given.
MODES = ("auto", "prompts")


def _no_message(_text: str) -> None:
    pass


@dataclass(frozen=True)
class SegmentSettings:
    """How every image of a run is segmented (one field per ``samkit segment`` option).

    Attributes:
        model, model_type, device: what :func:`napari_sam.load_model` takes.
        mode: ``"auto"``, ``"prompts"`` or None (prompts if an image has any, else auto).
        strategy: automatic prompts, ``"auto"``, ``"points"`` or ``"boxes"``.
        precision: image encoder precision (None: the environment's or auto).
        mask_threshold: logit threshold for box and label refinement (None: their defaults).
        channel_axis, channels: which axis holds channels and which to use.
        axes, through: stack axis letters (``"ZYX"``...) and the propagation axis; None for 2D.
        amg, linking, propagation: parameter values by name (missing names take the defaults of
            :data:`~napari_sam.automatic.parameters.AMG_PARAMETERS`, ``LINKING_PARAMETERS``,
            ``PROPAGATION_PARAMETERS``).
        tile, halo: tiles of large 2D images in the automatic mode (None: the model's defaults,
            see :mod:`napari_sam.tiles`).
    """

    model: str = DEFAULT_MODEL
    model_type: str | None = None
    device: str | None = None
    mode: str | None = None
    strategy: str = "auto"
    precision: str | None = None
    mask_threshold: float | None = None
    channel_axis: int | None = None
    channels: tuple[int, ...] | None = None
    axes: str | None = None
    through: str | None = None
    amg: Mapping = field(default_factory=dict)
    linking: Mapping = field(default_factory=dict)
    propagation: Mapping = field(default_factory=dict)
    tile: int | None = None
    halo: int | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise PromptError(f"mode must be one of {', '.join(MODES)} (or None); got {self.mode!r}.")
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    def check(self) -> SegmentSettings:
        """Refuse, before any model loads, a value no image of a run could use (a batch would
        otherwise report the same mistake for every image).

        Raises:
            SettingsError, PromptError: an unknown precision (also in ``NAPARI_SAMKIT_PRECISION``),
                strategy or parameter name, or a parameter value outside its range.
        """
        from .automatic.parameters import AMG_PARAMETERS, STRATEGIES, check_table
        from .errors import SettingsError
        from .linking import check_linking
        from .precision import resolve_precision
        from .prompt_checks import check_mask_threshold
        from .propagation import check_propagation
        from .tiles import check_tiling

        resolve_precision(self.precision)
        check_mask_threshold(self.mask_threshold)
        if self.strategy not in STRATEGIES:
            raise SettingsError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}.")
        check_table(AMG_PARAMETERS, dict(self.amg), "automatic segmentation parameter")
        check_linking(**self.linking)
        check_propagation(**self.propagation)
        check_tiling(self.tile, self.halo)
        return self

    @property
    def preprocessing(self) -> dict:
        """``channel_axis`` / ``channels`` keywords of :func:`napari_sam.preprocess.as_rgb`."""
        prep = {"channel_axis": self.channel_axis}
        if self.channels:
            prep["channels"] = list(self.channels)
        return prep

    @property
    def threshold(self) -> dict:
        """``mask_threshold`` for box and label refinement, when set."""
        return {} if self.mask_threshold is None else {"mask_threshold": self.mask_threshold}

    def amg_values(self) -> dict:
        """Every automatic-segmentation parameter: the given values over the defaults."""
        from .automatic.parameters import AMG_PARAMETERS, table_defaults

        return {**table_defaults(AMG_PARAMETERS), **dict(self.amg)}


@dataclass(frozen=True)
class ImageTask:
    """The files of one image: its input, its prompts and where its outputs go.

    Attributes:
        image: the input image file.
        output: the label image to write (``.tif``).
        boxes, points: CSV prompt files (see :mod:`napari_sam.io`), or None.
        labels: a rough label image to refine, or None.
        overlay: a PNG picture of the labels over the image to write, or None.
        store: an embedding store (``store_is_folder=False``: this very store, created if
            missing) or a folder of stores (one per image, model and precision, as the
            widgets' store setting), or None.
    """

    image: Path
    output: Path
    boxes: Path | None = None
    points: Path | None = None
    labels: Path | None = None
    overlay: Path | None = None
    store: Path | None = None
    store_is_folder: bool = False

    @property
    def has_prompts(self) -> bool:
        return bool(self.boxes or self.points or self.labels)

    @property
    def tracks(self) -> Path:
        """The tracks table a time-lapse's automatic run writes beside its labels."""
        return self.output.with_name(self.output.stem + "_tracks.csv")


@dataclass
class SegmentedImage:
    """What :func:`segment_file` wrote: the label image and a few figures of it.

    Attributes:
        objects: number of labels.
        mean_area: mean object size in pixels (voxels for stacks), 0 without objects.
        seconds: wall time of reading, segmenting and writing.
        written: the files written, label image last.
        notes: remarks for the person (e.g. how boxes were propagated).
    """

    objects: int
    mean_area: float
    seconds: float
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def label_figures(labels: np.ndarray) -> tuple[int, float]:
    """``(objects, mean area in pixels)`` of a label image."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))
    sizes = counts[1:][counts[1:] > 0]
    return int(sizes.size), float(sizes.mean()) if sizes.size else 0.0


def resolve_mode(settings: SegmentSettings, task: ImageTask) -> str:
    """``"auto"`` or ``"prompts"`` for this task; refuses contradictory choices."""
    mode = settings.mode or ("prompts" if task.has_prompts else "auto")
    if mode == "prompts" and not task.has_prompts:
        raise PromptError("--mode prompts needs --boxes, --points or --labels.")
    if mode == "auto" and (task.boxes or task.points):
        raise PromptError("--mode auto ignores prompts: drop --boxes/--points, or use --mode prompts.")
    return mode


def check_2d(image: np.ndarray, path, channel_axis: int | None) -> None:
    """Refuse a stack given as a 2D image, naming ``--axes``."""
    if image.ndim >= 3 and channel_axis is None and not (image.ndim == 3 and image.shape[-1] in (3, 4)):
        raise ImageError(f"{path} has shape {image.shape}: this looks like a 3D stack, not a 2D image. Give "
                         f"--axes (e.g. {'ZYX' if image.ndim == 3 else 'TZYX'}) to segment it as a stack, or "
                         "--channel-axis if one axis holds channels.")


@dataclass
class TaskInputs:
    """A task's inputs, read and checked before any model work.

    Attributes:
        image: the image as read (``H x W``, ``H x W x C`` or a stack; a large 2D image as
            a lazy zarr array, or the list of its pyramid levels).
        rgb: the 2D image as the model's RGB input (None for stacks and large images).
        mode: ``"auto"`` or ``"prompts"``.
        boxes: ``N x 4`` boxes (2D), or ``(planes or None, boxes)`` for stacks; None without.
        points: ``(coords, labels, objects)`` of a points CSV, or None.
        rough: the rough label image to refine, or None.
    """

    image: np.ndarray
    rgb: np.ndarray | None
    mode: str
    boxes: object = None
    points: tuple | None = None
    rough: np.ndarray | None = None
    source: object = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the (full-resolution) image."""
        first = self.image[0] if isinstance(self.image, list) else self.image
        return tuple(int(v) for v in first.shape)


def read_inputs(task: ImageTask, settings: SegmentSettings, image: np.ndarray | None = None) -> TaskInputs:
    """Read and check ``task``'s image and prompt files (no model needed: bad input fails fast).

    Raises:
        SamkitError: an unreadable file, a stack without ``axes``, prompts that do not fit.
    """
    from .io import open_image, read_boxes_csv, read_image, read_plane_boxes_csv, read_points_csv

    if image is None:
        image = read_image(task.image) if settings.axes else open_image(task.image)
    rough = read_image(task.labels) if task.labels else None
    mode = resolve_mode(settings, task)
    if settings.axes:
        if settings.channel_axis is not None or settings.channels:
            raise PromptError("--axes with --channel-axis is not supported yet: save the stack as gray or RGB planes.")
        if task.points:
            raise PromptError("--axes takes --boxes (with or without a plane column) or --labels, not --points.")
        axes, axis, rgb = _stack_axes(image, settings)
        boxes = read_plane_boxes_csv(task.boxes, axes[axis] if axis is not None else None) if task.boxes else None
        return TaskInputs(image, None, mode, boxes, None, rough)
    from .source import PlaneSource

    check_2d(image[0] if isinstance(image, list) else image, task.image, settings.channel_axis)
    source = PlaneSource(image, settings.channel_axis, settings.preprocessing.get("channels"))
    rgb = None if source.large else source.rgb()
    if rough is not None and tuple(rough.shape) != source.shape:
        raise PromptError(f"The rough labels {task.labels} are {tuple(rough.shape)} but the image is "
                          f"{source.shape} (height x width); they must cover the same pixels.")
    boxes = read_boxes_csv(task.boxes) if task.boxes else None
    points = read_points_csv(task.points) if task.points else None
    return TaskInputs(image, rgb, mode, boxes, points, rough, source)


def _stack_axes(image: np.ndarray, settings: SegmentSettings) -> tuple[str, int | None, bool]:
    """``(axes, index of the propagation axis, rgb)`` of a stack."""
    from .annotation import spatial_shape
    from .stack import parse_axes, through_axis

    rgb = image.ndim >= 3 and image.shape[-1] in (3, 4) and len(settings.axes) == image.ndim - 1
    axes = parse_axes(settings.axes, len(spatial_shape(image.shape, rgb=rgb)))
    return axes, through_axis(axes, settings.through), rgb


def segment_file(
    task: ImageTask,
    settings: SegmentSettings,
    model,
    *,
    inputs: TaskInputs | None = None,
    progress: Callable[[float, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    say: Callable[[str], None] = _no_message,
    client=None,
    threads: int | None = None,
) -> SegmentedImage:
    """Segment ``task.image`` with ``model`` and write ``task.output`` (and its overlay / tracks).

    Args:
        inputs: the task's inputs already read (:func:`read_inputs`: a batch reads the
            next image while this one is segmented); read here when None.
        progress: ``progress(done, total)`` of the segmentation.
        cancel: polled during the segmentation; True raises :class:`~napari_sam.errors.Cancelled`
            (nothing is written then).
        say: where remarks for the person go (the command line prints them).
        client, threads: a ``distributed.Client``: the tiles of a large 2D image (automatic
            mode), or the planes of a stack (``settings.axes``), run as its tasks, with
            ``threads`` torch threads each (see :mod:`napari_sam.cluster`).

    Raises:
        SamkitError: bad image, prompts or outputs, with what to do; nothing is written then.
    """
    from .io import write_labels

    started = time.perf_counter()
    if inputs is None:
        inputs = read_inputs(task, settings)
    if settings.axes:
        labels, notes, extra = _segment_stack(task, settings, model, inputs, progress, cancel, client, threads)
        written = [*extra, write_labels(task.output, labels)]
        objects, mean_area = label_figures(labels)
    else:
        sink, notes, extra = _segment_plane(task, settings, model, inputs, progress, cancel, say, client, threads)
        objects, mean_area = label_figures(sink.array)
        written = [*extra, sink.publish()]
        _parts_folder(task).exists() and _remove_parts(task)
    return SegmentedImage(objects, mean_area, time.perf_counter() - started, written, notes)


def _parts_folder(task: ImageTask) -> Path:
    """Where a tiled run keeps its finished tiles until the label image is written (resume)."""
    return task.output.with_name(f".{task.output.name}.tiles")


def _remove_parts(task: ImageTask) -> None:
    import shutil

    shutil.rmtree(_parts_folder(task), ignore_errors=True)


def _segment_plane(task, settings, model, inputs: TaskInputs, progress, cancel, say, client=None,
                   threads=None) -> tuple:
    """A 2D image (any size) -> ``(LabelSink, notes, extra files written)``; nothing is published."""
    from .automatic.generator import uses_point_grid
    from .io import LabelSink, overlay_image, write_png
    from .precision import resolve_precision
    from .tiles import TileGrid

    source = inputs.source
    grid = inputs.mode == "auto" and inputs.rough is None and uses_point_grid(model, settings.strategy)
    precision = resolve_precision(settings.precision, model.spec, encoder_bound=not grid)
    say(f"model {model.spec.name} ({model.spec.architecture}, {model.spec.image_size} px input, "
        f"{precision} image encoder)")
    store, key = _open_store(task, settings, source, model, precision)
    stored = {"store": store, "key": key}
    sink = LabelSink(task.output, source.shape)
    notes = []
    try:
        if inputs.rough is not None:
            from .automatic import segment_from_labels

            sink.array[...] = segment_from_labels(source, inputs.rough, model, precision=settings.precision,
                                                  progress=progress, cancel=cancel, **stored, **settings.threshold)
        elif inputs.mode == "prompts":
            sink.array[...] = _segment_prompts(source, model, inputs.boxes, inputs.points, settings, progress,
                                               cancel, **stored)
        else:
            from .automatic.tiled import label_everything

            tiles = TileGrid.for_model(source.shape, model.spec, settings.tile, settings.halo)
            if not tiles.single:
                say(f"{len(tiles)} tiles of {tiles.tile} px with a {tiles.halo} px halo ({tiles.rows} x "
                    f"{tiles.cols}); finished tiles are kept in {_parts_folder(task)} until the labels are written")
            if client is not None and not tiles.single:
                say(f"the tiles run on Dask ({len(client.scheduler_info().get('workers', {}))} workers)")
            elif client is not None:
                say("the image fits in one tile: it is segmented here, not on Dask")
            label_everything(source, model, amg=settings.amg_values(), strategy=settings.strategy,
                             precision=settings.precision, tile=settings.tile, halo=settings.halo,
                             output=sink.array, parts=None if tiles.single else _parts_folder(task),
                             progress=progress, cancel=cancel, client=client, path=task.image,
                             worker_settings=settings, worker_threads=threads, channel_axis=settings.channel_axis,
                             channels=settings.preprocessing.get("channels"), **stored)
        if store:
            notes.append(f"{store.reads} embedding(s) read from {store.path}, {store.writes} computed")
        extra = [write_png(task.overlay, _overlay(source, sink.array, overlay_image))] if task.overlay else []
    except BaseException:
        sink.discard()
        raise
    return sink, notes, extra


#: Longest side of the overlay picture of a large image (the labels are shown on its overview).
OVERLAY_SIDE = 4096


def _overlay(source, labels, draw) -> np.ndarray:
    """The overlay picture: full size for an image of usual size, an overview of a large one."""
    if not source.large:
        return draw(source.rgb(), np.asarray(labels))
    picture = source.overview(OVERLAY_SIDE // 2)
    h, w = source.shape
    rows = (np.arange(picture.shape[0]) * h // picture.shape[0]).astype(np.int64)
    cols = (np.arange(picture.shape[1]) * w // picture.shape[1]).astype(np.int64)
    small = np.stack([np.asarray(labels[int(r), :])[cols] for r in rows]) if not isinstance(labels, np.ndarray) \
        else labels[np.ix_(rows, cols)]
    return draw(np.clip(picture, 0, 255).astype(np.uint8) if picture.dtype != np.uint8 else picture, small)


def _open_store(task: ImageTask, settings: SegmentSettings, source, model, precision: str):
    """``(store, key)`` of the task's store for a 2D image (a :class:`~napari_sam.source.PlaneSource`),
    or ``(None, None)``."""
    if task.store is None:
        return None, None
    from .embedding import EmbeddingKey
    from .store import EmbeddingStore, store_in_folder

    key = EmbeddingKey.create(source.signature, model, precision, view=source.view)
    path = store_in_folder(task.store, key, task.image.stem) if task.store_is_folder else task.store
    return EmbeddingStore.open(path, key), key


def _segment_prompts(source, model, boxes, points, settings, progress, cancel, store=None, key=None) -> np.ndarray:
    """Boxes and/or points -> label image, one object per box (row i: label i+1) or per point group."""
    from .predictor import Predictor

    if boxes is not None and points is None:
        from .automatic import segment_boxes

        return segment_boxes(source, boxes, model, precision=settings.precision, progress=progress, cancel=cancel,
                             store=store, key=key, **settings.threshold)
    from .embed import embed_one

    predictor = Predictor(model, precision=settings.precision)
    predictor.store = store  # zoomed windows (small objects) are stored with the image's embedding
    embedding = embed_one(model, source, key=key, store=store, cache=predictor.cache, precision=settings.precision)
    predictor.set_embedding(embedding, image=source)
    labels = np.zeros(source.shape, np.uint32)
    coords, point_labels, objects = points
    object_ids = np.unique(objects)
    if boxes is not None and (object_ids.min() < 1 or object_ids.max() > len(boxes)):
        raise PromptError(
            f"With --boxes, the points' object column names the box (1 to {len(boxes)}); got {object_ids.tolist()}."
        )
    for object_id in object_ids:
        chosen = objects == object_id
        box = boxes[object_id - 1] if boxes is not None else None
        answer = predictor.predict_regions(points=coords[chosen], labels=point_labels[chosen], box=box)[0]
        x0, y0, x1, y1 = answer.region
        view = labels[y0:y1, x0:x1]
        mask = answer.masks[int(np.argmax(answer.iou_scores))] & (view == 0)
        view[mask] = object_id
    return labels


def _segment_stack(task, settings, model, inputs: TaskInputs, progress, cancel, client=None,
                   threads=None) -> tuple[np.ndarray, list[str], list]:
    """A volume or time-lapse (``settings.axes``), every mode, ids through the stack (planes on Dask with
    ``client``)."""
    from .linking import write_tracks_csv
    from .volumes import segment_volume

    axes, _axis, rgb = _stack_axes(inputs.image, settings)
    mode = "labels" if task.labels else "boxes" if task.boxes else "everything"
    result = segment_volume(inputs.image, model, axes, mode, rgb=rgb, through=settings.through, boxes=inputs.boxes,
                            rough_labels=inputs.rough, params=settings.amg_values(), strategy=settings.strategy,
                            precision=settings.precision, linking=dict(settings.linking),
                            propagation=dict(settings.propagation),
                            store=str(task.store) if task.store else None, progress=progress, cancel=cancel,
                            client=client, worker_settings=settings, worker_threads=threads)
    labels = np.asarray(result.labels)
    extra: list[Path] = []
    notes = list(result.notes)
    if "T" in axes[:-2] and mode == "everything":
        write_tracks_csv(task.tracks, labels, result.parents, axes.index("T"))
        extra.append(task.tracks)
        notes.append(f"wrote the tracks table {task.tracks} ({len(result.parents)} division children)")
    if task.overlay:
        notes.append("an overlay picture is drawn for 2D images only; open the stack and its labels in napari.")
    return labels, notes, extra
