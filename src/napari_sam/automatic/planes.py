"""Automatic segmentation of images and stacks, plane by plane, without a GUI.

The napari widget (:mod:`napari_sam._widgets.automatic`) reads its layers into the
plain values this module takes and runs :func:`segment_stack` in a worker; all the
logic that does not need napari lives here so it can be tested (and scripted):

* :func:`amg_kwargs`: a set of generator parameters checked against their one table
  (:data:`~napari_sam.automatic.parameters.AMG_PARAMETERS`), over the defaults.
* :func:`boxes_from_shapes`: rectangles of a napari Shapes layer (``V x D`` vertex
  arrays in ``(..., row, col)``) -> ``(x0, y0, x1, y1)`` boxes per plane.
* :func:`plane_indices`, :func:`segment_stack`: run one mode on every plane (or the
  current plane) of a ``(..., Y, X)`` or ``(..., Y, X, 3)`` stack; the result has
  the full spatial shape.

Planes are always the last two spatial axes (rows, columns); the leading axes
(Z, T, ...) are iterated.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError, PromptError, SamkitError
from .parameters import amg_defaults, check_amg_parameters

#: Modes of the widget: key -> what people read.
MODES: dict[str, str] = {
    "everything": "segment everything",
    "boxes": "refine boxes from a Shapes layer",
    "labels": "refine a rough Labels layer",
    "edges": "edge map",
}
#: How segment-everything results of a stack are linked across its first axis: key -> what people read.
LINKS: dict[str, str] = {
    "none": "planes separately",
    "objects": "3D objects (a volume)",
    "tracks": "tracks (a time-lapse)",
}
#: Word in the name of each mode's result layer.
_RESULT_WORDS = {"everything": "auto", "boxes": "boxes", "labels": "refined", "edges": "edges"}

STRATEGY_HELP = (
    "How 'segment everything' prompts the model. points: Meta's grid of point prompts (SAM, MobileSAM). "
    "boxes: box proposals from the image, refined by the model (for box-only models such as LiteMedSAM). "
    "auto: points if the model was trained on points, else boxes. With boxes, the grid and crop parameters "
    "do not apply, and Meta's default IoU / stability thresholds (0.88 / 0.95) are replaced by the box "
    "strategy's own (see napari_sam.automatic.box_strategy)."
)


def amg_kwargs(values: Mapping[str, float] | None = None) -> dict[str, float]:
    """Checked keyword arguments for ``generate_masks``: ``values`` over the defaults.

    Raises:
        SamkitError: an unknown name, or a value outside the parameter's range.
    """
    return {**amg_defaults(), **check_amg_parameters(**(values or {}))}


def effective_strategy(strategy: str, spec) -> str:
    """``"points"`` or ``"boxes"``: what ``strategy="auto"`` means for a model (its registry entry)."""
    if strategy == "auto":
        return spec.automatic_strategy
    return strategy


def result_name(image_name: str, mode: str, model_name: str) -> str:
    """Name of a result layer, e.g. ``"coins auto (lite_medsam)"``."""
    return f"{image_name} {_RESULT_WORDS[mode]} ({model_name})"


# --------------------------------------------------------------------------- planes


def plane_indices(spatial_shape: Sequence[int], current: Sequence[float] | None = None) -> list[tuple[int, ...]]:
    """Indices along the leading axes of every plane, or of the current plane only.

    Args:
        spatial_shape: ``(..., H, W)``; a 2D image has the single plane ``()``.
        current: position along all spatial axes (e.g. the viewer's, in data
            coordinates); its leading entries are rounded and clipped into the stack.
    """
    leading = tuple(int(s) for s in spatial_shape[:-2])
    if current is None:
        return list(itertools.product(*(range(s) for s in leading)))
    position = np.rint(np.asarray(current, dtype=np.float64)[: len(leading)]).astype(np.int64)
    return [tuple(int(p) for p in np.clip(position, 0, np.asarray(leading, dtype=np.int64) - 1))]


def to_data_frame(coords: np.ndarray, scale, translate, image_scale, image_translate) -> np.ndarray:
    """Coordinates of one layer -> data coordinates of another (scale and translate only).

    Trailing axes are aligned (a 2D layer over a 3D image), as napari does.
    """
    coords = np.array(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] == 0:
        return coords
    d = min(coords.shape[1], len(scale), len(image_scale))  # extra leading axes are left as they are
    scale, translate = np.asarray(scale, float)[-d:], np.asarray(translate, float)[-d:]
    image_scale, image_translate = np.asarray(image_scale, float)[-d:], np.asarray(image_translate, float)[-d:]
    coords[:, -d:] = (coords[:, -d:] * scale + translate - image_translate) / image_scale
    return coords


def boxes_from_shapes(
    shapes: Sequence[np.ndarray], shape_types: Sequence[str], spatial_shape: Sequence[int]
) -> dict[tuple[int, ...] | None, tuple[np.ndarray, np.ndarray]]:
    """Rectangles of a Shapes layer -> boxes per plane.

    Args:
        shapes: one ``V x D`` vertex array per shape, ``(..., row, col)`` in the
            image's data coordinates; ``D`` is the image's number of spatial axes,
            or 2 for boxes meant for every plane.
        shape_types: napari's type of each shape; only ``"rectangle"`` is accepted.
        spatial_shape: ``(..., H, W)`` of the image.

    Returns:
        ``{plane: (boxes N x 4 (x0, y0, x1, y1), ids N)}`` where ``plane`` is the
        index along the leading axes (None: every plane) and ``ids`` are the shapes'
        rows + 1 (the label each box becomes).

    Raises:
        PromptError: no shapes, shapes that are not rectangles, a rectangle that
            spans several planes, or vertices of the wrong dimension.
    """
    ndim = len(spatial_shape)
    if len(shapes) == 0:
        raise PromptError("The Shapes layer is empty: draw a rectangle around each object first (R).")
    wrong = [(i, t) for i, t in enumerate(shape_types) if t != "rectangle"]
    if wrong:
        kinds = sorted({t for _, t in wrong})
        raise PromptError(
            f"{len(wrong)} shape(s) are not rectangles ({', '.join(kinds)}, e.g. shape {wrong[0][0] + 1}); "
            "each object needs a box: delete them or draw rectangles (R) instead."
        )
    per_plane: dict = {}
    for row, vertices in enumerate(shapes):
        vertices = np.asarray(vertices, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] not in (2, ndim):
            raise PromptError(
                f"Shape {row + 1} has {vertices.shape[-1]}-D vertices but the image has {ndim} spatial axes; "
                f"draw the rectangles in a Shapes layer made for this image."
            )
        plane = None
        if vertices.shape[1] == ndim and ndim > 2:
            leading = np.rint(vertices[:, :-2]).astype(np.int64)
            if (leading != leading[0]).any():
                raise PromptError(f"Rectangle {row + 1} is not on one plane; draw each box on a single plane.")
            plane = tuple(int(v) for v in leading[0])
        yx = vertices[:, -2:]
        box = np.concatenate([yx.min(0)[::-1], yx.max(0)[::-1]])  # (x0, y0, x1, y1)
        per_plane.setdefault(plane, ([], []))
        per_plane[plane][0].append(box)
        per_plane[plane][1].append(row + 1)
    return {k: (np.asarray(b, np.float64).reshape(-1, 4), np.asarray(i, np.int64)) for k, (b, i) in per_plane.items()}


def check_rough_labels(labels_shape: Sequence[int], spatial_shape: Sequence[int], name: str = "The labels") -> None:
    """Raise :class:`PromptError` unless rough labels cover exactly the image's pixels."""
    if tuple(labels_shape) != tuple(spatial_shape):
        raise PromptError(
            f"{name} have shape {tuple(labels_shape)} but the image is {tuple(spatial_shape)}; rough labels must "
            "cover the same pixels (paint them in a Labels layer made from this image)."
        )


# --------------------------------------------------------------------------- running


@dataclass
class StackRequest:
    """Everything one run needs, read from the viewer (plain values only).

    Attributes:
        image: the image data, ``(..., H, W)`` or ``(..., H, W, C)`` with ``rgb``.
        mode: a key of :data:`MODES`.
        planes: leading-axis indices of the planes to segment.
        params: ``generate_masks`` parameters (see :func:`amg_kwargs`).
        strategy: ``"auto"``, ``"points"`` or ``"boxes"``.
        boxes: for mode ``"boxes"``, the output of :func:`boxes_from_shapes`.
        rough_labels: for mode ``"labels"``, the label volume of the spatial shape.
        use_mask_prompt: give rough labels as mask prompts too (SAM models).
        precision: encoder precision or None.
        store: a folder for embedding stores (see :func:`napari_sam.store.store_in_folder`):
            the planes' embeddings are read from it and written to it; None: none kept.
        image_name: the image's name, for the store's folder name.
        link: a key of :data:`LINKS`: in mode ``"everything"``, link the planes along
            the first axis into 3D objects or tracks (see :func:`link_planes_of`).
        levels: for a 2D image shown as a multiscale pyramid, its levels (full resolution
            first; ``image`` is the first): coarse views are read from them.
        tile, halo: tiles of planes larger than one tile in mode ``"everything"`` (None:
            the model's defaults; see :mod:`napari_sam.tiles`).
    """

    image: np.ndarray
    mode: str
    planes: list[tuple[int, ...]]
    rgb: bool = False
    params: dict | None = None
    strategy: str = "auto"
    boxes: dict | None = None
    rough_labels: np.ndarray | None = None
    use_mask_prompt: bool = False
    precision: str | None = None
    store: str | None = None
    image_name: str = "image"
    link: str = "none"
    levels: list | None = None
    tile: int | None = None
    halo: int | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        shape = tuple(self.image.shape)
        return shape[:-1] if self.rgb else shape


def _embedding_store(request: StackRequest, model):
    """``(store, key)``: the store of the request's image and the key of its whole stack, or (None, None)."""
    if request.store is None:
        return None, None
    from ..precision import resolve_precision
    from ..store import open_in_folder
    from .generator import uses_point_grid

    grid = request.mode in ("everything", "edges") and uses_point_grid(model, request.strategy)
    precision = resolve_precision(request.precision, model.spec, encoder_bound=not grid)
    return open_in_folder(request.store, request.image, model, precision, request.image_name)


def _segment_plane(request: StackRequest, model, plane: tuple, source, progress, cancel,
                   store=None, key=None) -> np.ndarray:
    """One plane of ``request`` (a :class:`~napari_sam.source.PlaneSource`) -> ``H x W`` labels (float32
    edges in mode ``"edges"``)."""
    from . import edge_map, generate_masks, segment_boxes, segment_from_labels
    from .tiled import label_everything

    shape = source.shape
    common = dict(precision=request.precision, progress=progress, cancel=cancel, store=store,
                  key=None if key is None else key.at(plane=plane))
    if request.mode == "everything":
        return label_everything(source, model, amg=amg_kwargs(request.params), strategy=request.strategy,
                                tile=request.tile, halo=request.halo, **common)
    if request.mode == "edges":
        if source.large:
            raise ImageError(f"The edge map is made for images of up to {SCALING_LIMIT_TEXT}; this plane is "
                             f"{shape[1]} x {shape[0]}. Crop it first, or segment everything (tiled) instead.")
        records = generate_masks(source.rgb(), model, strategy=request.strategy, return_logits=True,
                                 **common, **amg_kwargs(request.params))
        if records and "logits" not in records[0]:  # box proposals keep no logits: edges of the masks
            return edge_map([r["segmentation"].astype(np.float32) for r in records], shape=shape)
        return edge_map(records, shape=shape)
    if request.mode == "boxes":
        boxes, ids = request.boxes.get(plane) or request.boxes.get(None) or (np.zeros((0, 4)), np.zeros(0, int))
        if len(boxes) == 0:
            return np.zeros(shape, np.uint32)
        painted = segment_boxes(source, boxes, model, **common)
        return np.where(painted > 0, np.concatenate([[0], ids])[painted], 0).astype(np.uint32)
    if request.mode == "labels":
        rough = np.asarray(request.rough_labels[plane])
        if not rough.any():
            return np.zeros(shape, rough.dtype)
        return segment_from_labels(source, rough, model, use_mask_prompt=request.use_mask_prompt, **common)
    raise SamkitError(f"Unknown mode {request.mode!r}; choose one of {', '.join(MODES)}.")


#: How large a plane the edge map takes (it keeps one full-size map per mask).
SCALING_LIMIT_TEXT = "4096 x 4096 pixels"


def plane_source(request: StackRequest, plane: tuple):
    """The :class:`~napari_sam.source.PlaneSource` of one plane of a request (read lazily: a large 2D
    image is never loaded whole)."""
    from ..source import PlaneSource

    if not plane:
        data = request.levels if request.levels else request.image
    else:
        data = np.asarray(request.image[plane])
    return PlaneSource(data, channel_axis=2 if request.rgb else None)


def link_planes_of(labels: np.ndarray, link: str, planes: Sequence[tuple[int, ...]] | None = None):
    """Per-plane labels of a stack linked along its first axis (``link`` a key of :data:`LINKS`).

    Only the segmented ``planes`` take part (a run on the current plane has nothing
    to link). Returns :class:`~napari_sam.linking.Linked`.
    """
    from ..linking import Linked, link_planes

    if link not in LINKS:
        raise SamkitError(f"Unknown link {link!r}; choose one of {', '.join(LINKS)}.")
    if link == "none" or labels.ndim < 3 or (planes is not None and len(planes) < 2):
        return Linked(labels)
    if labels.ndim > 3:
        raise ImageError(f"Linking in the widget takes a 3D stack; this one is {labels.shape}. Use "
                         "samkit segment --axes TZYX (or napari_sam.linking.link_stack) for a series of volumes.")
    if link == "objects":
        return link_planes(labels, divisions=False)
    return link_planes(labels, divisions=True, min_extent=1)


def _planes_text(planes: list[tuple[int, ...]]) -> str:
    shown = ", ".join(str(p) for p in planes[:5]) + (", ..." if len(planes) > 5 else "")
    return f"({shown})"


def plane_request(request: StackRequest, plane: tuple[int, ...]) -> StackRequest | None:
    """The request of one plane of ``request`` alone, as a 2D request (None: nothing to do there).

    What a Dask task receives (:func:`napari_sam.cluster.run_planes`): the plane's
    pixels, its boxes or rough labels, and the settings; no store (the workers may not
    see it) and no linking (done over the whole stack afterwards).
    """
    boxes = rough = None
    if request.mode == "boxes":
        found = request.boxes.get(plane) or request.boxes.get(None)
        if found is None or len(found[0]) == 0:
            return None
        boxes = {None: found}
    if request.mode == "labels":
        rough = np.array(request.rough_labels[plane])
        if not rough.any():
            return None
    data = request.levels if not plane and request.levels else None
    image = np.asarray(request.image[plane]) if plane else (request.image if data is None else data[0])
    return StackRequest(image=image, mode=request.mode, planes=[()], rgb=request.rgb, params=request.params,
                        strategy=request.strategy, boxes=boxes, rough_labels=rough,
                        use_mask_prompt=request.use_mask_prompt, precision=request.precision,
                        image_name=request.image_name, levels=data, tile=request.tile, halo=request.halo)


def on_plane(error: SamkitError, plane: tuple[int, ...]) -> SamkitError:
    """``error`` with its plane named (as is for a 2D image), of the same kind."""
    return type(error)(f"Plane {plane}: {error}" if plane else str(error))


def _check_request(request: StackRequest) -> None:
    shape = request.spatial_shape
    if len(shape) < 2:
        raise ImageError(f"An image of shape {request.image.shape} has no 2D plane to segment.")
    if request.mode == "labels":
        check_rough_labels(np.shape(request.rough_labels), shape)
    if request.mode == "boxes" and not request.boxes:
        raise PromptError("No boxes: draw a rectangle around each object in a Shapes layer first.")
    if request.mode == "labels" and not any(np.asarray(request.rough_labels[p]).any() for p in request.planes):
        raise PromptError("The rough labels have no object on the plane(s) to segment; paint objects first.")
    if request.mode == "boxes" and None not in request.boxes and not any(p in request.boxes for p in request.planes):
        raise PromptError(f"No rectangle on the plane(s) to segment {_planes_text(request.planes)}; draw boxes "
                          "on them, or untick 'current plane only'.")


def _planes_here(request: StackRequest, model, progress, cancel):
    """``(plane, result, numbered)`` of each plane in order, segmented in this process."""
    from .amg import Cancelled

    n = len(request.planes)
    store, key = _embedding_store(request, model)
    for k, plane in enumerate(request.planes):
        if cancel is not None and cancel():
            raise Cancelled(f"Cancelled before plane {k + 1} of {n}.")
        source = plane_source(request, plane)

        def plane_progress(done: int, total: int | None, k=k) -> None:
            if progress is not None and total:
                progress(k + min(done / total, 1.0), n)

        try:
            result = _segment_plane(request, model, plane, source, plane_progress, cancel, store, key)
        except SamkitError as error:
            raise on_plane(error, plane) from error
        yield plane, result, n == 1 and source.large  # (tiles are numbered 1, 2, ... already)
        if progress is not None:
            progress(k + 1, n)


def segment_stack(
    request: StackRequest,
    model,
    progress: Callable[[float, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    client=None,
    worker_settings=None,
    worker_threads: int | None = None,
) -> np.ndarray:
    """Run ``request.mode`` on each of ``request.planes``; the other planes stay 0.

    Label ids: in mode ``"everything"`` objects are numbered 1, 2, ... across the
    planes in plane order (no id on two planes); in mode ``"boxes"`` box row ``i`` is
    label ``i + 1``; in mode ``"labels"`` the rough ids are kept.

    Args:
        request: see :class:`StackRequest`.
        model: a loaded :class:`~napari_sam.models.sam.SamModel` (None with ``client``).
        progress: ``progress(planes_done, n_planes)`` with a fractional
            ``planes_done`` while a plane is running.
        cancel: polled between planes and by the core; True raises :class:`Cancelled`.
        client: a ``distributed.Client``: each plane is a Dask task
            (:func:`napari_sam.cluster.run_planes`); its pixels travel to the worker,
            which loads the model of ``worker_settings`` (a
            :class:`~napari_sam.image_task.SegmentSettings`) once, with
            ``worker_threads`` torch threads (None: its CPUs). The store is not used
            then. The labels are identical to a run in this process.

    Returns:
        Labels of the spatial shape (uint32, or the rough labels' dtype), or
        float32 edge strength in mode ``"edges"``.

    Raises:
        Cancelled: when ``cancel()`` returned True; nothing is returned then.
        SamkitError: bad inputs, with the core's message (prefixed by the plane in stacks).
    """
    _check_request(request)
    dtype = np.float32 if request.mode == "edges" else np.uint32
    if request.mode == "labels" and np.issubdtype(request.rough_labels.dtype, np.unsignedinteger):
        dtype = request.rough_labels.dtype
    out = np.zeros(request.spatial_shape, dtype=dtype)
    if client is None:
        results = _planes_here(request, model, progress, cancel)
    else:
        from ..cluster import run_planes

        if worker_settings is None:
            raise SamkitError("Planes on Dask need the workers' model settings (worker_settings=SegmentSettings(...)).")
        results = run_planes(client, request, worker_settings, worker_threads, progress, cancel)
    numbered = set()
    for plane, result, tiled in results:
        if result is not None:
            out[plane] = result
        if tiled:
            numbered.add(plane)
    if request.mode == "everything":
        from skimage.segmentation import relabel_sequential

        next_id = 1
        for plane in request.planes:  # in plane order, wherever the planes ran
            if plane in numbered or not out[plane].any():
                continue
            out[plane], _, _ = relabel_sequential(out[plane], offset=next_id)
            next_id = int(out[plane].max()) + 1
    return out
