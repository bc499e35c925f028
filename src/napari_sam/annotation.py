"""Interactive annotation without a GUI: planes of nD images, prompts, mask choice, commits.

The napari annotator (:mod:`napari_sam._widgets.annotator`) reads its layers, calls
these pure functions and writes the results back; everything here is plain numpy
so it can be tested (and scripted) without a viewer.

Conventions:

* A *spatial* array is the image without its channel axis (RGB or multichannel):
  the label volume has the spatial shape. Prompt layers hold spatial coordinates
  ``(..., row, col)`` as napari does (pixel centres at integers).
* :class:`PlaneGeometry` says which two spatial axes are shown (rows, columns) and
  where the other axes stand; prompts on that plane become ``(x, y)`` coordinates
  for :class:`~napari_sam.predictor.Predictor` (``x`` = column, ``y`` = row).
* One *object* is one box with the points that belong to it (or, without boxes,
  all points): :func:`group_prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ImageError

#: Commit modes and what they do with pixels that already carry a label.
COMMIT_MODES: dict[str, str] = {
    "fill_background": "only fill background: existing labels stay, new objects fill unlabelled pixels",
    "keep": "keep existing objects: an object that touches any existing label is not written",
    "overwrite": "overwrite: new objects replace existing labels where they overlap",
}
DEFAULT_COMMIT_MODE = "fill_background"


# --------------------------------------------------------------------------- planes


@dataclass(frozen=True)
class PlaneGeometry:
    """The 2D plane of a spatial nD array that is on screen.

    Attributes:
        spatial_shape: shape of the spatial array (the label volume), ``D`` entries.
        displayed: ``(row_axis, col_axis)``, the two spatial axes shown as rows and
            columns of the plane (in that order).
        position: index along every spatial axis; entries of displayed axes are ignored.
    """

    spatial_shape: tuple[int, ...]
    displayed: tuple[int, int]
    position: tuple[int, ...]

    def __post_init__(self) -> None:
        ndim = len(self.spatial_shape)
        if ndim < 2:
            raise ImageError(f"A plane needs at least two spatial axes; got shape {self.spatial_shape}.")
        if len(self.position) != ndim:
            raise ImageError(f"position has {len(self.position)} entries for a {ndim}-D array.")
        row, col = self.displayed
        if row == col or not (0 <= row < ndim and 0 <= col < ndim):
            raise ImageError(f"displayed axes {self.displayed} are not two distinct axes of a {ndim}-D array.")

    @classmethod
    def at(cls, spatial_shape: Sequence[int], displayed: Sequence[int], position: Sequence[float]) -> PlaneGeometry:
        """Build a geometry, rounding ``position`` and clipping it into the array."""
        shape = tuple(int(s) for s in spatial_shape)
        rounded = np.rint(np.asarray(position, dtype=np.float64)).astype(np.int64)
        clipped = np.clip(rounded, 0, np.asarray(shape) - 1)
        return cls(shape, (int(displayed[0]), int(displayed[1])), tuple(int(p) for p in clipped))

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def plane_axes(self) -> tuple[int, ...]:
        """The spatial axes that are not displayed (slider axes)."""
        return tuple(a for a in range(self.ndim) if a not in self.displayed)

    @property
    def plane_index(self) -> tuple[int, ...]:
        """Position along :attr:`plane_axes`; ``()`` for a 2D image."""
        return tuple(self.position[a] for a in self.plane_axes)

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the plane: sizes of the row and column axes."""
        return (self.spatial_shape[self.displayed[0]], self.spatial_shape[self.displayed[1]])

    @property
    def transposed(self) -> bool:
        """True if the row axis comes after the column axis in the array."""
        return self.displayed[0] > self.displayed[1]

    def slicer(self, collapsed: bool = False) -> tuple:
        """Index tuple selecting the plane from a spatial array.

        ``collapsed=True`` indexes an array whose non-displayed axes have size 1
        (as the preview layer), i.e. uses 0 on them.
        """
        return tuple(
            slice(None) if a in self.displayed else (0 if collapsed else self.position[a]) for a in range(self.ndim)
        )

    def read(self, volume: np.ndarray, collapsed: bool = False) -> np.ndarray:
        """The ``H x W`` plane of a spatial array (a copy for lazy arrays, a view for numpy)."""
        plane = np.asarray(volume[self.slicer(collapsed)])
        return plane.T if self.transposed else plane

    def write(self, volume: np.ndarray, plane: np.ndarray, collapsed: bool = False) -> None:
        """Write an ``H x W`` plane into a spatial array in place."""
        volume[self.slicer(collapsed)] = plane.T if self.transposed else plane

    def in_plane(self, coords: np.ndarray) -> np.ndarray:
        """Which rows of ``M x D`` spatial coordinates lie on this plane (``M`` bools)."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, self.ndim)
        axes = list(self.plane_axes)
        if not axes:
            return np.ones(len(coords), bool)
        return (np.rint(coords[:, axes]) == np.asarray(self.plane_index)).all(axis=1)

    def to_xy(self, coords: np.ndarray) -> np.ndarray:
        """``M x D`` spatial (row/col as napari) coordinates -> ``M x 2`` ``(x, y)`` on the plane."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, self.ndim)
        return coords[:, [self.displayed[1], self.displayed[0]]]

    def volume_indices(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Plane pixel indices -> a tuple of ``D`` index arrays into the spatial volume."""
        rows = np.asarray(rows, dtype=np.intp)
        indices = [np.full(rows.shape, self.position[a], dtype=np.intp) for a in range(self.ndim)]
        indices[self.displayed[0]] = rows
        indices[self.displayed[1]] = np.asarray(cols, dtype=np.intp)
        return tuple(indices)


def spatial_shape(data_shape: Sequence[int], rgb: bool = False, channel_axis: int | None = None) -> tuple[int, ...]:
    """Shape of the label volume for image data of ``data_shape``.

    ``rgb`` drops the last axis (napari's RGB(A) images), ``channel_axis`` drops that axis.
    """
    shape = list(int(s) for s in data_shape)
    if rgb and channel_axis is not None:
        raise ImageError("An image is either RGB or has a channel axis, not both.")
    if rgb:
        shape.pop()
    elif channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise ImageError(f"channel_axis={channel_axis} does not exist for data of shape {tuple(data_shape)}.")
        shape.pop(channel_axis % len(shape))
    if len(shape) < 2:
        raise ImageError(f"Image data of shape {tuple(data_shape)} has fewer than two spatial axes; nothing to "
                         "segment.")
    return tuple(shape)


def image_plane(
    data: np.ndarray, geometry: PlaneGeometry, rgb: bool = False, channel_axis: int | None = None
) -> np.ndarray:
    """The displayed plane of nD image data: ``H x W``, or ``H x W x C`` with channels.

    Args:
        data: the image layer's data (numpy, dask, zarr: anything that slices).
        geometry: plane in spatial axes (see :func:`spatial_shape`).
        rgb: the last axis of ``data`` holds RGB(A) channels.
        channel_axis: axis of ``data`` that holds channels (multichannel images).
    """
    ndim = len(data.shape)
    channel = ndim - 1 if rgb else (None if channel_axis is None else channel_axis % ndim)
    spatial_axes = [a for a in range(ndim) if a != channel]
    index: list = [slice(None)] * ndim
    for spatial, data_axis in enumerate(spatial_axes):
        if spatial not in geometry.displayed:
            index[data_axis] = geometry.position[spatial]
    plane = np.asarray(data[tuple(index)])
    wanted = [spatial_axes[geometry.displayed[0]], spatial_axes[geometry.displayed[1]]]
    if channel is not None:
        wanted.append(channel)
    remaining = sorted(wanted)  # axes left after indexing, in array order
    return np.transpose(plane, [remaining.index(a) for a in wanted])


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompt of one object on the current plane.

    Attributes:
        box: ``(x0, y0, x1, y1)`` or None.
        points: ``N x 2`` ``(x, y)`` coordinates (``N`` may be 0).
        labels: ``N`` point labels, 1 foreground, 0 background.
        box_index: row of the box in the Shapes layer, or None.
        point_indices: rows of the points in the Points layer.
    """

    box: np.ndarray | None
    points: np.ndarray
    labels: np.ndarray
    box_index: int | None = None
    point_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def has_points(self) -> bool:
        return len(self.points) > 0


def points_on_plane(coords: np.ndarray, geometry: PlaneGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Points of a layer that lie on the plane.

    Args:
        coords: ``M x D`` point coordinates (the Points layer's data).

    Returns:
        ``(indices, xy)``: rows of ``coords`` on the plane and their ``K x 2`` ``(x, y)``.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, geometry.ndim)
    indices = np.flatnonzero(geometry.in_plane(coords))
    return indices, geometry.to_xy(coords[indices])


def boxes_on_plane(shapes: Sequence[np.ndarray], geometry: PlaneGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Shapes of a layer that lie on the plane, as boxes (their bounding boxes).

    Args:
        shapes: one ``V x D`` vertex array per shape (the Shapes layer's data).

    Returns:
        ``(indices, boxes)``: rows of ``shapes`` on the plane and ``K x 4``
        ``(x0, y0, x1, y1)`` boxes. Shapes of zero width or height are left out.
    """
    indices, boxes = [], []
    for i, vertices in enumerate(shapes):
        vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, geometry.ndim)
        if not geometry.in_plane(vertices).all():
            continue
        xy = geometry.to_xy(vertices)
        low, high = xy.min(axis=0), xy.max(axis=0)
        if (high - low).min() <= 0:
            continue
        indices.append(i)
        boxes.append(np.concatenate([low, high]))
    return np.asarray(indices, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


def group_prompts(
    points_xy: np.ndarray,
    point_labels: np.ndarray,
    boxes_xy: np.ndarray,
    point_indices: np.ndarray | None = None,
    box_indices: np.ndarray | None = None,
) -> list[ObjectPrompt]:
    """Split the prompts of one plane into objects.

    Without boxes, all points form one object (if at least one is positive). With
    boxes, each box is one object and each point joins the box nearest to it
    (distance 0 inside a box; on ties the smaller box wins), so a point inside a
    box refines that box's object.

    Args:
        points_xy: ``N x 2`` ``(x, y)``; point_labels: ``N`` (1 or 0).
        boxes_xy: ``B x 4`` ``(x0, y0, x1, y1)``.
        point_indices, box_indices: layer rows, kept on the objects (default 0..N-1, 0..B-1).
    """
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    point_labels = np.asarray(point_labels, dtype=np.int64).reshape(-1)
    boxes_xy = np.asarray(boxes_xy, dtype=np.float64).reshape(-1, 4)
    point_indices = np.arange(len(points_xy)) if point_indices is None else np.asarray(point_indices, np.int64)
    box_indices = np.arange(len(boxes_xy)) if box_indices is None else np.asarray(box_indices, np.int64)
    if len(boxes_xy) == 0:
        if not (point_labels == 1).any():
            return []
        return [ObjectPrompt(None, points_xy, point_labels, None, point_indices)]
    owner = np.zeros(len(points_xy), np.int64)
    if len(points_xy) and len(boxes_xy) > 1:
        px, py = points_xy[:, :1], points_xy[:, 1:]
        dx = np.maximum(np.maximum(boxes_xy[None, :, 0] - px, px - boxes_xy[None, :, 2]), 0.0)
        dy = np.maximum(np.maximum(boxes_xy[None, :, 1] - py, py - boxes_xy[None, :, 3]), 0.0)
        distance = np.hypot(dx, dy)
        area = (boxes_xy[:, 2] - boxes_xy[:, 0]) * (boxes_xy[:, 3] - boxes_xy[:, 1])
        owner = np.lexsort((np.broadcast_to(area, distance.shape), distance), axis=1)[:, 0]
    return [
        ObjectPrompt(
            boxes_xy[b], points_xy[owner == b], point_labels[owner == b], int(box_indices[b]), point_indices[owner == b]
        )
        for b in range(len(boxes_xy))
    ]


class MaskChoice:
    """Which candidate mask each object shows (SAM's whole / part / subpart outputs).

    Starts at each object's best mask (highest predicted IoU); :meth:`cycle` moves
    every object on to its next candidate.

    Args:
        iou_scores: one array of predicted IoU per object (3 for multimask, else 1).
    """

    def __init__(self, iou_scores: Sequence[np.ndarray]) -> None:
        self.iou_scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in iou_scores]
        self.best = [int(np.argmax(s)) if len(s) else 0 for s in self.iou_scores]
        self.offset = 0

    @property
    def n_candidates(self) -> int:
        return max((len(s) for s in self.iou_scores), default=0)

    def indices(self) -> list[int]:
        """The candidate shown for each object."""
        return [(b + self.offset) % max(len(s), 1) for b, s in zip(self.best, self.iou_scores)]

    def cycle(self) -> bool:
        """Show the next candidate; False if there is nothing to cycle (one candidate)."""
        if self.n_candidates < 2:
            return False
        self.offset = (self.offset + 1) % self.n_candidates
        return True

    def describe(self) -> str:
        """E.g. ``"mask 2/3, predicted IoU 0.91"`` (one object) or a summary for several."""
        if not self.iou_scores:
            return "no mask"
        chosen = [float(s[i]) for s, i in zip(self.iou_scores, self.indices())]
        if len(chosen) == 1:
            return f"mask {self.indices()[0] + 1}/{len(self.iou_scores[0])}, predicted IoU {chosen[0]:.2f}"
        which = "best masks" if self.offset == 0 else f"best + {self.offset}"
        return f"{len(chosen)} objects ({which}), mean predicted IoU {np.mean(chosen):.2f}"


# --------------------------------------------------------------------------- commit


class _ObjectIds:
    """``ids``: one per object, 0 for an object that was not written."""

    ids: np.ndarray

    @property
    def written_ids(self) -> np.ndarray:
        return self.ids[self.ids > 0]

    @property
    def skipped(self) -> np.ndarray:
        """Indices of the objects that were not written."""
        return np.flatnonzero(self.ids == 0)


@dataclass(frozen=True)
class CommitResult(_ObjectIds):
    """What :func:`commit_masks` wrote.

    Attributes:
        plane: the new ``H x W`` label plane (a new array).
        ids: ``K`` ids, the id given to each object, 0 where nothing was written.
        changed: ``H x W`` bool, pixels whose label changed.
    """

    plane: np.ndarray
    ids: np.ndarray
    changed: np.ndarray


def next_free_id(labels: np.ndarray) -> int:
    """The smallest id above every label in ``labels`` (1 for an empty label image)."""
    labels = np.asarray(labels)
    return int(labels.max(initial=0)) + 1


#: Around existing labels, the part of an object smaller than this share of its largest part is
#: not written (slivers of a pixel or two that a mask leaves between labelled objects).
FRAGMENT_SHARE = 0.1


def drop_fragments(mask: np.ndarray, share: float = FRAGMENT_SHARE) -> np.ndarray:
    """``mask`` without its connected parts smaller than ``share`` of its largest part (8-connected)."""
    from scipy import ndimage

    if not mask.any():
        return mask
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    parts, n = ndimage.label(mask[window], structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(parts.ravel())[1:]
    keep = np.concatenate([[False], sizes >= share * sizes.max()])
    out = np.zeros_like(mask)
    out[window] = keep[parts]
    return out


def commit_masks(
    label_plane: np.ndarray,
    masks: np.ndarray,
    mode: str = DEFAULT_COMMIT_MODE,
    next_id: int | None = None,
    ids: Sequence[int] | None = None,
) -> CommitResult:
    """Write object masks into a label plane with new consecutive ids.

    Args:
        label_plane: ``H x W`` integer labels (0 = background); not modified.
        masks: ``K x H x W`` bool, one mask per object (``H x W`` for one object).
        mode: ``"fill_background"`` (default: existing labels stay, objects fill the
            unlabelled pixels, without slivers: see :func:`drop_fragments`), ``"keep"`` (an object
            touching any existing label is
            not written at all) or ``"overwrite"`` (objects replace existing labels).
            Among the new objects the first wins overlaps, except in overwrite mode
            where later objects win.
        next_id: the first id to use (default :func:`next_free_id` of the plane; pass
            the volume's for nD data). Objects that end up empty get no id, so the
            ids written are consecutive.
        ids: the id of each object instead (an object through the planes of a
            stack keeps one id: :func:`commit_stack`); ``next_id`` is then unused.

    Returns:
        :class:`CommitResult`.

    Raises:
        ImageError: for shapes that do not match, an unknown mode, or ids that do
            not fit the label dtype.
    """
    if mode not in COMMIT_MODES:
        raise ImageError(f"Unknown commit mode {mode!r}; choose one of {', '.join(COMMIT_MODES)}.")
    label_plane = np.asarray(label_plane)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != label_plane.shape:
        raise ImageError(f"Masks of shape {masks.shape} do not fit a label plane of shape {label_plane.shape}.")
    k = masks.shape[0]
    if k == 0:
        return CommitResult(label_plane.copy(), np.zeros(0, np.int64), np.zeros(label_plane.shape, bool))
    first_id = next_free_id(label_plane) if next_id is None else int(next_id)
    existing = label_plane != 0
    if mode == "keep":
        touching = (masks & existing).reshape(k, -1).any(axis=1)
        masks = masks & ~touching[:, None, None]
    if mode == "overwrite":
        covered = masks.any(axis=0)
        owner = k - 1 - masks[::-1].argmax(axis=0)
    else:
        masks = masks & ~existing
        if mode == "fill_background":
            masks = np.stack([drop_fragments(mask) for mask in masks])
        covered = masks.any(axis=0)
        owner = masks.argmax(axis=0)
    owners = owner[covered]
    written = np.bincount(owners, minlength=k) > 0
    given = None if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if given is not None and (given.shape[0] != k or (given <= 0).any()):
        raise ImageError(f"ids must be {k} positive ids, one per object; got {list(given)}.")
    ids = np.zeros(k, np.int64)
    ids[written] = given[written] if given is not None else first_id + np.arange(int(written.sum()))
    if written.any() and np.issubdtype(label_plane.dtype, np.integer):
        top = int(ids.max())
        if top > np.iinfo(label_plane.dtype).max:
            raise ImageError(
                f"The labels layer has dtype {label_plane.dtype}, which cannot hold id {top}. "
                "Convert it to a wider type, e.g. layer.data = layer.data.astype('uint32')."
            )
    plane = label_plane.copy()
    plane[covered] = ids[owners]
    return CommitResult(plane=plane, ids=ids, changed=plane != label_plane)


@dataclass(frozen=True)
class StackCommit(_ObjectIds):
    """What :func:`commit_stack` wrote.

    Attributes:
        ids: ``K`` ids, one per object (the same on every plane), 0 for an object not written.
        indices: a tuple of ``D`` index arrays into the spatial volume, the voxels that change.
        values: the new label of each of those voxels.
        planes: plane indices written per object (empty for skipped objects).
    """

    ids: np.ndarray
    indices: tuple[np.ndarray, ...]
    values: np.ndarray
    planes: list[list[int]]


def commit_stack(labels: np.ndarray, geometry_at, objects: Sequence[dict], mode: str = DEFAULT_COMMIT_MODE,
                 ids: Sequence[int | None] | None = None) -> StackCommit:
    """Write objects that span several planes, each with one id on every plane.

    Args:
        labels: the spatial label volume (read only; the caller writes
            :attr:`StackCommit.indices` / :attr:`~StackCommit.values` in one step).
        geometry_at: ``geometry_at(k)`` -> the :class:`PlaneGeometry` of plane ``k``.
        objects: one ``{plane: mask}`` per object, masks ``H x W`` bool or
            :class:`~napari_sam.propagation.RegionMask`.
        mode: as :func:`commit_masks`; with ``"keep"``, an object touching another
            label on any of its planes is not written on any plane.
        ids: the id of each object (e.g. the committed label it was propagated
            from: its own pixels do not count as another label), None for a new one;
            new ids are consecutive from :func:`next_free_id` of the volume.

    Returns:
        :class:`StackCommit`.
    """
    if mode not in COMMIT_MODES:
        raise ImageError(f"Unknown commit mode {mode!r}; choose one of {', '.join(COMMIT_MODES)}.")
    k = len(objects)
    wanted = list(ids) if ids is not None else [None] * k
    if len(wanted) != k:
        raise ImageError(f"ids has {len(wanted)} entries for {k} objects.")
    full = [{p: (m.full() if hasattr(m, "full") else np.asarray(m, bool)) for p, m in o.items()} for o in objects]
    own = [int(i) if i else 0 for i in wanted]
    if mode == "keep":
        for j, masks in enumerate(full):
            for p, mask in masks.items():
                plane = geometry_at(p).read(labels)
                if ((plane != 0) & (plane != own[j]) & mask).any():
                    full[j] = {}
                    break
    top = next_free_id(labels)
    final = np.zeros(k, np.int64)
    for j in range(k):
        if full[j] and any(m.any() for m in full[j].values()):
            final[j] = own[j] if own[j] else top
            top += 0 if own[j] else 1
    plane_mode = "fill_background" if mode == "keep" else mode
    indices: list[list[np.ndarray]] = []
    values: list[np.ndarray] = []
    planes: list[list[int]] = [[] for _ in range(k)]
    for p in sorted({p for masks in full for p in masks}):
        members = [j for j in range(k) if final[j] and p in full[j]]
        if not members:
            continue
        geometry = geometry_at(p)
        plane = geometry.read(labels)
        masks = np.stack([full[j][p] for j in members])
        mine = np.isin(plane, [own[j] for j in members if own[j]])  # an object's own label is not "existing"
        base = np.where(mine, 0, plane)
        result = commit_masks(base, masks, plane_mode, ids=final[members])
        new = np.where(mine & (result.plane == 0), plane, result.plane)  # own pixels the mask left stay
        changed = new != plane
        rows, cols = np.nonzero(changed)
        if len(rows):
            indices.append(list(geometry.volume_indices(rows, cols)))
            values.append(new[rows, cols])
        for j, written in zip(members, result.ids):
            if written:
                planes[j].append(p)
    ndim = np.ndim(labels)
    index = tuple(np.concatenate([ix[a] for ix in indices]) if indices else np.zeros(0, np.intp) for a in range(ndim))
    value = np.concatenate(values) if values else np.zeros(0, np.asarray(labels).dtype)
    final[[j for j in range(k) if not planes[j]]] = 0
    return StackCommit(final, index, value, planes)
