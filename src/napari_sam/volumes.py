"""Whole stacks without a GUI: volumes into 3D objects, time-lapses into tracks (``samkit segment --axes``).

:func:`segment_volume` runs one mode on every plane of a stack and gives ids that
hold through the stack:

* ``"everything"``: segment everything plane by plane
  (:func:`napari_sam.automatic.planes.segment_stack`), linked along Z into 3D
  objects and along T into tracks with divisions (:func:`napari_sam.linking.link_stack`);
* ``"boxes"`` with a plane per box: each box prompts its object on its plane, the
  object is propagated through the stack (:func:`napari_sam.propagation.propagate_stack`)
  and box row ``i`` becomes label ``i + 1`` on every plane (a track id in a time-lapse);
  without planes the boxes apply to every plane, as in 2D;
* ``"labels"``: rough labels refined plane by plane, their ids kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import ImageError, PromptError


@dataclass
class VolumeResult:
    """Labels of the stack's spatial shape and, for time-lapses, child -> parent track ids."""

    labels: np.ndarray
    parents: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def segment_volume(
    image: np.ndarray,
    model,
    axes: str,
    mode: str,
    *,
    rgb: bool = False,
    through: str | None = None,
    boxes: tuple[np.ndarray | None, np.ndarray] | None = None,
    rough_labels: np.ndarray | None = None,
    params: Mapping | None = None,
    strategy: str = "auto",
    precision: str | None = None,
    linking: Mapping | None = None,
    propagation: Mapping | None = None,
    store: str | None = None,
    progress: Callable[[float, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    client=None,
    worker_settings=None,
    worker_threads: int | None = None,
) -> VolumeResult:
    """Segment a stack ``... x Y x X`` (``x C`` with ``rgb``) with axis letters ``axes``.

    Args:
        mode: ``"everything"``, ``"boxes"`` or ``"labels"``.
        through: the axis letter boxes are propagated along (default Z, else T).
        boxes: ``(planes N or None, boxes N x 4 (x0, y0, x1, y1))`` (see
            :func:`napari_sam.io.read_plane_boxes_csv`).
        params: segment-everything parameters; ``linking``, ``propagation``: their settings.
        store: a folder of embedding stores (as the widgets' setting).
        client, worker_settings, worker_threads: planes as Dask tasks (see
            :func:`napari_sam.automatic.planes.segment_stack`); boxes with a plane column
            are propagated here (each plane needs the one before).
    """
    from .automatic.planes import StackRequest, segment_stack
    from .stack import PlaneStack, parse_axes

    stack = PlaneStack.of(image, axes, through=through, rgb=rgb)
    shape = stack.geometry.spatial_shape
    letters = parse_axes(axes, len(shape))
    planes = [tuple(p) for p in np.ndindex(*shape[:-2])]
    notes = []
    if mode == "boxes" and boxes is not None and boxes[0] is not None:
        return _propagate_boxes(stack, model, boxes, precision, propagation, store, progress, cancel)
    request = StackRequest(image=image, mode=mode, planes=planes, rgb=rgb, params=dict(params or {}),
                           strategy=strategy, precision=precision, store=store)
    if mode == "boxes":
        if boxes is None:
            raise PromptError("Mode boxes needs boxes.")
        request.boxes = {None: (np.asarray(boxes[1], np.float64), np.arange(1, len(boxes[1]) + 1))}
    if mode == "labels":
        request.rough_labels = rough_labels
    if client is not None:
        notes.append(f"the planes ran on Dask ({len(client.scheduler_info().get('workers', {}))} workers)")
    labels = segment_stack(request, model, progress=progress, cancel=cancel, client=client,
                           worker_settings=worker_settings, worker_threads=worker_threads)
    parents: dict[int, int] = {}
    if mode == "everything" and any(a in letters[:-2] for a in "ZT"):
        from .linking import link_stack

        linked = link_stack(labels, letters, **dict(linking or {}))
        labels, parents = linked.labels, linked.parents
        notes.append(f"linked {int(labels.max())} objects through {', '.join(a for a in letters[:-2] if a in 'ZT')}")
    return VolumeResult(labels, parents, notes)


def _propagate_boxes(stack, model, boxes, precision, propagation, store, progress, cancel) -> VolumeResult:
    from .annotation import commit_stack
    from .embedding import EmbeddingCache
    from .predictor import Predictor
    from .propagation import propagate_stack

    planes, rows = boxes
    if stack.axis is None:
        raise ImageError("Boxes with a plane column need a stack (give --axes, e.g. ZYX or TYX).")
    if len(stack.geometry.plane_axes) > 1:
        raise ImageError(f"Boxes with a plane column work on stacks with one axis besides Y and X; this one has "
                         f"{stack.geometry.ndim} spatial axes. Segment each time point's volume separately.")
    n = len(stack)
    bad = [int(p) for p in planes if not 0 <= p < n]
    if bad:
        raise PromptError(f"Box plane(s) {sorted(set(bad))} are outside the stack of {n} planes (0 to {n - 1}).")
    stack = stack.with_signature()
    cache = EmbeddingCache()
    predictor = Predictor(model, precision=precision, cache=cache)
    store_object = None
    if store is not None:
        from .precision import resolve_precision
        from .store import open_in_folder

        store_object, _ = open_in_folder(store, stack.data, model, resolve_precision(precision, model.spec), "stack")
    objects, ids = [], []
    groups = [(int(p), np.flatnonzero(planes == p).tolist()) for p in np.unique(planes)]
    for g, (plane, members) in enumerate(groups):
        stack.predictor_on(predictor, plane, cache, store_object)
        start = predictor.predict(box=rows[members], multimask=False)
        masks = np.asarray(start.masks).reshape(len(members), -1, *stack.geometry.plane_shape)[:, 0]
        logits = np.asarray(start.low_res_logits).reshape(len(members), -1, 256, 256)[:, 0]
        keep = [m for m in range(len(members)) if masks[m].any()]

        def step(done, total, g=g):
            if progress is not None:
                progress(g + done / max(total, 1), len(groups))

        found = propagate_stack(stack, predictor, plane, [masks[m] for m in keep], logits=[logits[m] for m in keep],
                                cache=cache, store=store_object, settings=propagation, progress=step, cancel=cancel)
        objects += found
        ids += [members[m] + 1 for m in keep]
    labels = np.zeros(stack.geometry.spatial_shape, np.uint32)
    result = commit_stack(labels, stack.at, [o.masks for o in objects], "fill_background", ids=ids)
    labels[result.indices] = result.values
    notes = [f"box {i}: planes {min(o.planes)}-{max(o.planes)}" for i, o in zip(ids, objects)]
    return VolumeResult(labels, {}, notes)
