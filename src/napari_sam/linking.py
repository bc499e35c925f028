"""Per-plane objects linked across planes: 3D objects of a volume, tracks of a time-lapse.

:func:`link_planes` takes labels numbered plane by plane (``K x ...``: each plane's
objects have their own ids, as segment-everything gives them) and gives every
object one id through the planes:

* consecutive planes are matched by **optimal assignment** on mask IoU (the
  Hungarian method, :func:`scipy.optimize.linear_sum_assignment`; pairs under
  ``min_overlap`` are never matched), not greedily;
* **gap closing**: an object missing on up to ``max_gap`` planes is matched again
  on the plane after (objects left unmatched on both sides, same rule);
* **divisions** (time-lapses, ``divisions=True``): an object that becomes two (a
  new object lying mostly on a parent whose track goes on, or two new objects
  lying mostly on a parent that ended) ends the parent's track; each child starts
  a new track whose parent is recorded (:attr:`Linked.parents`), as in the Cell
  Tracking Challenge's format and napari's Tracks layer ``graph``;
* **merges** (two become one): the best match continues, the other ends;
* objects on fewer than ``min_extent`` planes are dropped (noise in a volume).

A "plane" may itself be 3D (a ``T x Z x Y x X`` series of volumes links in time).
No GUI; the automatic widget, ``samkit segment --axes`` and scripts call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .automatic.parameters import Parameter, check_table, table_defaults
from .errors import ImageError

#: Linking settings: the automatic widget's fields, the CLI's flags and the checks come from here.
LINKING_PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter("min_overlap", float, 0.3, 0.0, 1.0, 0.05,
                  "Two objects on consecutive planes (or frames) are the same object only if their masks "
                  "overlap at least this much (IoU). Lower it for objects that move fast.", strategies=()),
        Parameter("max_gap", int, 1, 0, 10, 1,
                  "An object missing on up to this many planes in a row keeps its id when it appears again.",
                  strategies=()),
        Parameter("min_extent", int, 2, 1, 1000, 1,
                  "Objects on fewer planes than this are dropped (in a volume: noise on one slice). "
                  "Time-lapses keep every object (1).", strategies=()),
    )
}
#: A child must lie on its parent by at least this share of its own area (divisions).
CHILD_SHARE = 0.5


def check_linking(**values) -> dict:
    """``values`` checked against :data:`LINKING_PARAMETERS`, over the defaults."""
    return {**table_defaults(LINKING_PARAMETERS), **check_table(LINKING_PARAMETERS, values, "linking setting")}


@dataclass
class Linked:
    """Linked labels.

    Attributes:
        labels: ``K x ...`` labels, one id per object through the planes (1, 2, ...).
        parents: child track id -> parent track id (divisions only).
    """

    labels: np.ndarray
    parents: dict[int, int] = field(default_factory=dict)

    def graph(self) -> dict[int, list[int]]:
        """napari's Tracks ``graph``: ``{child: [parent]}``."""
        return {child: [parent] for child, parent in self.parents.items()}


def _plane_objects(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, areas, local)``: a plane's nonzero ids, their areas, and the plane as ``0..n`` local indices."""
    flat = np.asarray(plane).ravel()
    ids, local = np.unique(flat, return_inverse=True)
    areas = np.bincount(local, minlength=len(ids))
    if ids.size and ids[0] == 0:
        return ids[1:], areas[1:], local  # local 0 is background; objects are 1..n
    return ids, areas, local + 1


def _overlaps(a_local, b_local, na: int, nb: int) -> np.ndarray:
    """``na x nb`` pixel counts of each pair of objects (local indices 1..n; 0 background)."""
    both = (a_local > 0) & (b_local > 0)
    pairs = (a_local[both].astype(np.int64) - 1) * nb + (b_local[both].astype(np.int64) - 1)
    return np.bincount(pairs, minlength=na * nb).reshape(na, nb)


def _match(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray, min_overlap: float) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs ``(i, j)`` by IoU, each at least ``min_overlap`` (and above 0)."""
    from scipy.optimize import linear_sum_assignment

    if inter.size == 0:
        return []
    iou = inter / (area_a[:, None] + area_b[None, :] - inter)
    allowed = (iou >= min_overlap) & (inter > 0)
    if not allowed.any():
        return []
    cost = np.where(allowed, 1.0 - iou, 2.0)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if allowed[i, j]]


def link_planes(
    labels: np.ndarray,
    min_overlap: float | None = None,
    max_gap: int | None = None,
    min_extent: int | None = None,
    divisions: bool = False,
) -> Linked:
    """Give each object one id through the planes of ``K x ...`` per-plane labels (see the module docstring).

    Args:
        labels: integer labels, planes along axis 0 (ids need not be unique across planes).
        min_overlap, max_gap, min_extent: see :data:`LINKING_PARAMETERS` (None: default).
        divisions: record divisions (time-lapses); without, a split keeps the best
            match and the other part starts a new object.

    Returns:
        :class:`Linked` with labels of ``labels``' shape (uint32) numbered 1, 2, ...
    """
    given = {k: v for k, v in dict(min_overlap=min_overlap, max_gap=max_gap, min_extent=min_extent).items()
             if v is not None}
    s = check_linking(**given)
    labels = np.asarray(labels)
    if labels.ndim < 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ImageError(f"Linking needs integer labels with planes along the first axis; got {labels.dtype} "
                         f"{labels.shape}.")
    n_planes = labels.shape[0]
    objects = [_plane_objects(labels[k]) for k in range(n_planes)]
    track: list[np.ndarray] = [np.zeros(len(ids), np.int64) for ids, _, _ in objects]  # plane -> track per object
    parents: dict[int, int] = {}
    next_track = 1
    ended: dict[int, tuple[int, int]] = {}  # track -> (plane, local object) it was last seen on, unmatched since
    for k in range(n_planes):
        ids, areas, local = objects[k]
        if k == 0:
            track[0][:] = np.arange(next_track, next_track + len(ids))
            next_track += len(ids)
            continue
        pids, pareas, plocal = objects[k - 1]
        inter = _overlaps(plocal, local, len(pids), len(ids))
        pairs = _match(inter, pareas, areas, s["min_overlap"])
        matched_prev = {i for i, _ in pairs}
        for i, j in pairs:
            track[k][j] = track[k - 1][i]
        for i in range(len(pids)):
            if i not in matched_prev:
                ended[int(track[k - 1][i])] = (k - 1, i)
        free = [j for j in range(len(ids)) if track[k][j] == 0]
        if divisions and free:
            next_track = _divisions(k, inter, areas, pairs, free, track, parents, next_track, ended)
            free = [j for j in range(len(ids)) if track[k][j] == 0]
        if s["max_gap"] and free:
            _close_gaps(k, free, objects, track, ended, s, parents)
            free = [j for j in range(len(ids)) if track[k][j] == 0]
        for j in free:
            track[k][j] = next_track
            next_track += 1
        for t in list(ended):  # matched again, or too old to close
            plane, _ = ended[t]
            if t in track[k] or k - plane > s["max_gap"]:
                ended.pop(t)
    return _paint(labels, objects, track, parents, s["min_extent"])


def _divisions(k, inter, areas, pairs, free, track, parents, next_track, ended) -> int:
    """Give the free objects of plane ``k`` that are children of a plane ``k - 1`` object their new tracks."""
    parent_of = {}
    for j in free:
        if inter.shape[0] == 0:
            break
        i = int(np.argmax(inter[:, j]))
        if inter[i, j] >= CHILD_SHARE * areas[j]:
            parent_of[j] = i
    continuing = dict(pairs)  # parent i -> its matched object j
    by_parent: dict[int, list[int]] = {}
    for j, i in parent_of.items():
        by_parent.setdefault(i, []).append(j)
    for i, children in by_parent.items():
        if i in continuing:
            children = [continuing[i]] + children[:1]
        elif len(children) < 2:
            continue
        else:
            children = children[:2]
        parent = int(track[k - 1][i])
        for j in children:
            track[k][j] = next_track
            parents[next_track] = parent
            next_track += 1
        ended.pop(parent, None)  # a divided parent does not come back by gap closing
    return next_track


def _close_gaps(k, free, objects, track, ended, s, parents) -> None:
    """Match free objects of plane ``k`` to tracks that ended within ``max_gap`` planes."""
    ids, areas, local = objects[k]
    candidates = [(t, plane, i) for t, (plane, i) in ended.items() if 1 <= k - plane - 1 <= s["max_gap"]]
    by_plane: dict[int, list[tuple[int, int]]] = {}
    for t, plane, i in candidates:
        by_plane.setdefault(plane, []).append((t, i))
    for plane in sorted(by_plane, reverse=True):  # the most recent first
        free = [j for j in free if track[k][j] == 0]
        if not free:
            return
        pids, pareas, plocal = objects[plane]
        entries = by_plane[plane]
        rows = np.array([i for _, i in entries])
        inter = _overlaps(plocal, local, len(pids), len(ids))[rows][:, free]
        for a, b in _match(inter, pareas[rows], areas[free], s["min_overlap"]):
            track[k][free[b]] = entries[a][0]


def _paint(labels, objects, track, parents, min_extent: int) -> Linked:
    extent: dict[int, int] = {}
    for t in track:
        for value in np.unique(t):
            extent[int(value)] = extent.get(int(value), 0) + 1
    in_tree = set(parents) | set(parents.values())
    keep = sorted(t for t, n in extent.items() if n >= min_extent or t in in_tree)
    renumber = {t: i + 1 for i, t in enumerate(keep)}
    out = np.zeros(labels.shape, np.uint32)
    for k, (_, _, local) in enumerate(objects):
        lut = np.zeros(len(track[k]) + 1, np.uint32)
        lut[1:] = [renumber.get(int(t), 0) for t in track[k]]
        out[k] = lut[local].reshape(labels.shape[1:])
    kept = {renumber[c]: renumber[p] for c, p in parents.items() if c in renumber and p in renumber}
    return Linked(out, kept)


def tracks_data(labels: np.ndarray, scale=None) -> np.ndarray:
    """napari Tracks data of tracked ``T x ...`` labels: rows ``(track_id, t, [z,] y, x)`` at object centroids."""
    from scipy import ndimage

    rows = []
    for t in range(labels.shape[0]):
        plane = labels[t]
        ids = np.unique(plane)
        ids = ids[ids > 0]
        if not ids.size:
            continue
        centres = ndimage.center_of_mass(np.ones(plane.shape), plane, ids)
        for i, c in zip(ids, centres):
            rows.append([int(i), t, *c])
    data = np.asarray(rows, dtype=np.float64).reshape(-1, labels.ndim + 1)
    return data[np.lexsort((data[:, 1], data[:, 0]))] if len(data) else data


def link_stack(labels: np.ndarray, axes: str, **settings) -> Linked:
    """Link per-plane labels of a stack with axis letters ``axes`` (see :func:`napari_sam.stack.parse_axes`).

    A ``Z`` axis links into 3D objects (within each time point), then a ``T`` axis
    links objects (2D, or 3D after the first step) into tracks with divisions;
    ``min_extent`` applies along Z only (every track is kept). Other axes are left as they are.

    Args:
        labels: ``... x Y x X`` labels numbered per plane.
        settings: :data:`LINKING_PARAMETERS`.

    Returns:
        :class:`Linked` (``parents`` from the time links).
    """
    labels = np.asarray(labels)
    if len(axes) != labels.ndim:
        raise ImageError(f"Axes {axes!r} do not fit labels of shape {labels.shape}.")
    out = labels.astype(np.uint32)
    parents: dict[int, int] = {}
    if "Z" in axes[:-2]:
        z = axes.index("Z")
        moved = np.moveaxis(out, z, 0)
        others = moved.shape[1:-2]
        result = np.zeros_like(moved)
        offset = 0
        for index in np.ndindex(*others):
            where = (slice(None),) + index
            linked = link_planes(moved[where], **settings).labels
            result[where] = np.where(linked > 0, linked + offset, 0)
            offset = int(result.max())
        out = np.moveaxis(result, 0, z)
    if "T" in axes[:-2]:
        t = axes.index("T")
        time_settings = {**settings, "min_extent": 1}
        moved = np.moveaxis(out, t, 0)
        linked = link_planes(moved, divisions=True, **time_settings)
        out, parents = np.moveaxis(linked.labels, 0, t), linked.parents
    return Linked(np.ascontiguousarray(out), parents)


def write_tracks_csv(path, labels: np.ndarray, parents: dict[int, int], time_axis: int = 0) -> None:
    """A table of tracks: one row per track ``track_id,start,end,parent`` (the Cell Tracking Challenge's
    ``res_track.txt`` columns, with a header; parent 0 for none)."""
    import csv

    moved = np.moveaxis(np.asarray(labels), time_axis, 0)
    spans: dict[int, list[int]] = {}
    for t in range(moved.shape[0]):
        for i in np.unique(moved[t]):
            if i:
                spans.setdefault(int(i), [t, t])[1] = t
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["track_id", "start", "end", "parent"])
        for i in sorted(spans):
            writer.writerow([i, spans[i][0], spans[i][1], parents.get(i, 0)])
