"""Segment through a stack: objects on one plane, propagated plane by plane along depth or time.

As LiteMedSAM's 3D inference and micro-sam's projection do: the object's mask on
one plane gives the prompt on the next plane (its box, grown by a margin because
objects grow between planes; for models trained on clicks and mask prompts, also
a positive point deep inside the mask and the mask's low-resolution logits), and
the model answers there. Propagation goes both ways from the start plane and stops
in each direction when

* the mask vanishes,
* the model's predicted IoU falls below ``min_iou``, or
* the mask's IoU with the previous plane's mask falls below ``min_overlap`` (the
  object jumped, or the box caught a neighbour), or
* the mask's area falls below ``min_area_share`` of the largest area the object had
  so far (measured on a fluorescence nuclei volume: past a nucleus' end in z the
  model keeps segmenting a blur a quarter of its size or less, at a predicted IoU
  of 0.6-0.8 and in the same place, which the two tests above do not catch).

Several objects propagate together (one decoder batch per plane for box-only
models). Masks are kept region-local (:class:`RegionMask`: a crop and its offset),
never as full planes per object, and are painted by the caller
(:func:`napari_sam.annotation.commit_stack`).

No GUI here: the annotator's "Segment through stack" runs :func:`propagate` in a
worker; ``samkit segment --axes`` and scripts call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .automatic.parameters import Parameter, check_table, table_defaults
from .errors import Cancelled, PromptError

#: Propagation settings: the annotator's fields, the CLI's flags and the checks come from here.
PROPAGATION_PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter("min_iou", float, 0.5, 0.0, 1.0, 0.05,
                  "Stop when the model's predicted IoU of the next plane's mask falls below this. "
                  "Raise it to stop earlier at faint ends of an object.", strategies=()),
        Parameter("min_overlap", float, 0.5, 0.0, 1.0, 0.05,
                  "Stop when the next plane's mask overlaps the previous plane's mask less than this (IoU). "
                  "Lower it for objects that move fast between frames.", strategies=()),
        Parameter("min_area_share", float, 0.4, 0.0, 1.0, 0.05,
                  "Stop when the mask's area falls below this share of the object's largest area so far: "
                  "past the end of a nucleus in z only a shrinking blur is left. 0 turns this off "
                  "(objects that shrink a lot, e.g. through a division).", strategies=()),
        Parameter("min_contrast_share", float, 0.5, 0.0, 1.0, 0.05,
                  "Stop when the object's contrast (mean gray level inside its mask minus around it) falls below "
                  "this share of its contrast on the start plane: past the end of an object only blur is left. "
                  "0 turns this off.", strategies=()),
        Parameter("box_margin", float, 0.1, 0.0, 1.0, 0.05,
                  "The previous mask's box is grown by this share of its size on each side (at least one pixel) "
                  "before prompting the next plane: room for an object that grows.", strategies=()),
    )
}


#: Gray levels (0-255) of contrast an object needs on its start plane for ``min_contrast_share`` to judge it.
MIN_START_CONTRAST = 2.0


def check_propagation(**values) -> dict[str, float]:
    """``values`` checked against :data:`PROPAGATION_PARAMETERS`, over the defaults."""
    return {**table_defaults(PROPAGATION_PARAMETERS), **check_table(PROPAGATION_PARAMETERS, values,
                                                                   "propagation setting")}


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class RegionMask:
    """A bool mask kept as its bounding-box crop: ``mask`` of ``h x w`` at ``(row, col)``.

    Attributes:
        row, col: offset of the crop in the plane.
        mask: ``h x w`` bool.
        shape: ``(H, W)`` of the plane.
    """

    row: int
    col: int
    mask: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(cls, full: np.ndarray) -> RegionMask:
        """The crop of an ``H x W`` bool mask (an empty mask gives a ``0 x 0`` crop)."""
        full = np.asarray(full, dtype=bool)
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        if rows.size == 0:
            return cls(0, 0, np.zeros((0, 0), bool), full.shape)
        return cls(int(rows[0]), int(cols[0]), full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy(), full.shape)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.row, self.row + self.mask.shape[0]), slice(self.col, self.col + self.mask.shape[1]))

    def full(self) -> np.ndarray:
        """The ``H x W`` bool mask."""
        out = np.zeros(self.shape, bool)
        out[self.slices] = self.mask
        return out

    def box(self) -> np.ndarray:
        """``4`` (x0, y0, x1, y1), ends exclusive."""
        h, w = self.mask.shape
        return np.array([self.col, self.row, self.col + w, self.row + h], dtype=np.float64)

    def iou(self, other: RegionMask) -> float:
        """Intersection over union with another region of the same plane."""
        r0, c0 = max(self.row, other.row), max(self.col, other.col)
        r1 = min(self.row + self.mask.shape[0], other.row + other.mask.shape[0])
        c1 = min(self.col + self.mask.shape[1], other.col + other.mask.shape[1])
        inter = 0
        if r1 > r0 and c1 > c0:
            a = self.mask[r0 - self.row:r1 - self.row, c0 - self.col:c1 - self.col]
            b = other.mask[r0 - other.row:r1 - other.row, c0 - other.col:c1 - other.col]
            inter = int(np.count_nonzero(a & b))
        union = self.area + other.area - inter
        return inter / union if union else 0.0

    def inner_point(self) -> np.ndarray:
        """``2`` (x, y): the pixel deepest inside the mask (farthest from its edge)."""
        from scipy import ndimage

        depth = ndimage.distance_transform_edt(np.pad(self.mask, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return np.array([self.col + c, self.row + r], dtype=np.float64)


def grown_box(box: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """``box`` (x0, y0, x1, y1) grown by ``margin`` of its size each side (at least 1 px), inside ``shape``."""
    h, w = shape
    size = np.array([box[2] - box[0], box[3] - box[1]], dtype=np.float64)
    pad = np.maximum(margin * size, 1.0)
    return np.array([max(0.0, box[0] - pad[0]), max(0.0, box[1] - pad[1]),
                     min(float(w), box[2] + pad[0]), min(float(h), box[3] + pad[1])])


# --------------------------------------------------------------------------- propagation


@dataclass
class PropagatedObject:
    """One object through the stack.

    Attributes:
        start: the plane its prompt was on.
        masks: plane index -> :class:`RegionMask` (the start plane included).
        scores: plane index -> the model's predicted IoU (the start plane's as given).
        stops: direction (+1, -1) -> why propagation stopped that way, e.g.
            ``"plane 12: predicted IoU 0.31 < 0.5"`` or ``"end of the stack"``.
    """

    start: int
    masks: dict[int, RegionMask] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    stops: dict[int, str] = field(default_factory=dict)

    @property
    def planes(self) -> list[int]:
        return sorted(self.masks)

    def replace_after(self, plane: int, direction: int, other: PropagatedObject) -> None:
        """Take ``other``'s masks beyond ``plane`` in ``direction`` (a correction), dropping ours there."""
        beyond = [k for k in self.masks if (k - plane) * direction > 0]
        for k in beyond:
            self.masks.pop(k)
            self.scores.pop(k, None)
        for k, mask in other.masks.items():
            if (k - plane) * direction >= 0:
                self.masks[k] = mask
                self.scores[k] = other.scores.get(k, 1.0)
        self.stops[direction] = other.stops.get(direction, "")


def _first_masks(masks) -> list[RegionMask]:
    out = []
    for mask in masks:
        region = mask if isinstance(mask, RegionMask) else RegionMask.of(mask)
        if region.area == 0:
            raise PromptError("An object to propagate has an empty mask on its start plane; prompt it first.")
        out.append(region)
    return out


def propagate(
    predictor,
    set_plane: Callable[[int], None],
    n_planes: int,
    start: int,
    masks: Sequence[np.ndarray | RegionMask],
    *,
    logits: Sequence[np.ndarray | None] | None = None,
    scores: Sequence[float] | None = None,
    directions: Sequence[int] = (1, -1),
    settings: Mapping[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[PropagatedObject]:
    """Propagate objects from plane ``start`` through planes ``0 .. n_planes - 1``.

    Args:
        predictor: a :class:`~napari_sam.predictor.Predictor`; ``set_plane(k)`` makes
            it answer on plane ``k`` (e.g. :meth:`napari_sam.stack.PlaneStack.predictor_on`).
        start: the plane the objects' masks are on.
        masks: one ``H x W`` bool mask (or :class:`RegionMask`) per object on ``start``.
        logits: each object's ``256 x 256`` low-resolution logits on ``start`` (fed to
            models trained on mask prompts on the next plane), or None.
        scores: predicted IoU of the start masks (default 1).
        directions: ``(1, -1)`` both ways, ``(1,)`` towards higher indices only (a
            correction from a middle plane), ``(-1,)`` towards lower.
        settings: ``min_iou``, ``min_overlap``, ``min_area_share``, ``min_contrast_share``,
            ``box_margin`` (see :data:`PROPAGATION_PARAMETERS`; the defaults for the others).
        progress: ``progress(planes_done, planes_at_most)``.
        cancel: polled before each plane; True raises :class:`~napari_sam.errors.Cancelled`.

    Returns:
        One :class:`PropagatedObject` per mask, in order.
    """
    s = check_propagation(**(settings or {}))
    regions = _first_masks(masks)
    if not 0 <= start < n_planes:
        raise PromptError(f"Start plane {start} is outside the stack of {n_planes} planes.")
    bad = [d for d in directions if d not in (1, -1)]
    if bad or not directions:
        raise PromptError(f"Directions are 1 and/or -1; got {list(directions)}.")
    objects = [PropagatedObject(start, {start: r}, {start: 1.0 if scores is None else float(scores[i])})
               for i, r in enumerate(regions)]
    uses_masks = predictor.spec.supports_points and "masks" in predictor.spec.prompt_types
    first_logits = list(logits) if logits is not None else [None] * len(objects)
    total = sum((n_planes - 1 - start) if d == 1 else start for d in directions)
    done = 0
    largest = [r.area for r in regions]
    contrast = [None] * len(objects)
    if s["min_contrast_share"] > 0:
        set_plane(start)
        contrast = [c if abs(c) >= MIN_START_CONTRAST else None  # (no contrast to lose: not judged)
                    for c in (mask_contrast(getattr(predictor, "source", None), r) for r in regions)]
    for direction in directions:
        previous = {i: (regions[i], first_logits[i] if uses_masks else None) for i in range(len(objects))}
        plane = start + direction
        while previous and 0 <= plane < n_planes:
            if cancel is not None and cancel():
                raise Cancelled(f"Propagation was cancelled at plane {plane}.")
            set_plane(plane)
            answers = _answer(predictor, previous, s["box_margin"], uses_masks)
            for i, (region, iou, low_res) in answers.items():
                obj, (before, _) = objects[i], previous[i]
                reason = None
                if region.area == 0:
                    reason = f"plane {plane}: the mask vanished"
                elif iou < s["min_iou"]:
                    reason = f"plane {plane}: predicted IoU {iou:.2f} < {s['min_iou']:g}"
                elif region.area < s["min_area_share"] * largest[i]:
                    reason = (f"plane {plane}: area {region.area} px < {s['min_area_share']:g} of the object's "
                              f"largest ({largest[i]} px)")
                else:
                    overlap = region.iou(before)
                    if overlap < s["min_overlap"]:
                        reason = f"plane {plane}: overlap with plane {plane - direction} {overlap:.2f} < " \
                                 f"{s['min_overlap']:g}"
                    elif contrast[i]:
                        share = mask_contrast(predictor.source, region) / contrast[i]
                        if share < s["min_contrast_share"]:
                            reason = f"plane {plane}: contrast {share:.2f} of the start plane's < " \
                                     f"{s['min_contrast_share']:g}"
                if reason is not None:
                    obj.stops[direction] = reason
                    previous.pop(i)
                    continue
                obj.masks[plane], obj.scores[plane] = region, iou
                largest[i] = max(largest[i], region.area)
                previous[i] = (region, low_res if uses_masks else None)
            done += 1
            if progress is not None:
                progress(done, total)
            plane += direction
        for i in previous:
            objects[i].stops[direction] = "end of the stack"
    return objects


def _answer(predictor, previous: dict, margin: float, uses_masks: bool) -> dict:
    """Each object's mask on the predictor's plane from its previous mask: ``{i: (RegionMask, iou, logits)}``."""
    shape = previous[next(iter(previous))][0].shape
    order = list(previous)
    boxes = np.stack([grown_box(previous[i][0].box(), margin, shape) for i in order])
    out = {}
    if not uses_masks:  # box-only models: one decoder batch for every object
        result = predictor.predict(box=boxes if len(order) > 1 else boxes[0], multimask=False)
        masks = result.masks.reshape(len(order), -1, *shape)[:, 0]
        ious = np.asarray(result.iou_scores).reshape(len(order), -1)[:, 0]
        for row, i in enumerate(order):
            out[i] = (RegionMask.of(masks[row]), float(ious[row]), None)
        return out
    for row, i in enumerate(order):
        region, low_res = previous[i]
        point = region.inner_point()[None]
        result = predictor.predict(points=point, labels=[1], box=boxes[row],
                                   mask_input=None if low_res is None else low_res[None], multimask=False)
        out[i] = (RegionMask.of(result.masks[0]), float(result.iou_scores[0]), result.low_res_logits[0])
    return out


def mask_contrast(source, region: RegionMask) -> float:
    """Mean gray level (0-255) inside ``region`` minus the mean in a ring around it (a quarter of the
    object's equivalent diameter wide, at least 2 pixels); 0 without a source or a mask."""
    from scipy import ndimage

    if source is None or region.area == 0:
        return 0.0
    h, w = region.shape
    ring = max(2, int(round(0.5 * np.sqrt(region.area / np.pi))))
    y0, x0 = max(0, region.row - ring), max(0, region.col - ring)
    y1, x1 = min(h, region.row + region.mask.shape[0] + ring), min(w, region.col + region.mask.shape[1] + ring)
    gray = np.asarray(source.rgb((x0, y0, x1, y1)), dtype=np.float32).mean(-1)
    inside = np.zeros(gray.shape, bool)
    inside[region.row - y0:region.row - y0 + region.mask.shape[0],
           region.col - x0:region.col - x0 + region.mask.shape[1]] = region.mask
    around = ndimage.binary_dilation(inside, iterations=ring) & ~inside
    if not around.any():
        return 0.0
    return float(gray[inside].mean() - gray[around].mean())


def propagate_stack(stack, predictor, start: int, masks, *, cache=None, store=None, **kwargs) -> list[PropagatedObject]:
    """:func:`propagate` through a :class:`~napari_sam.stack.PlaneStack` (embeddings from ``cache`` / ``store``).

    ``kwargs`` go to :func:`propagate` (``logits``, ``scores``, ``directions``,
    ``settings``, ``progress``, ``cancel``).
    """
    stack = stack.with_signature()
    return propagate(predictor, lambda k: stack.predictor_on(predictor, k, cache, store), len(stack), start, masks,
                     **kwargs)
