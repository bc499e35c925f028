"""Segment everything in a plane of any size: tile by tile, stitched into one label image.

A slide squeezed into one encoder input loses its small objects, and Meta's output
(one ``H x W`` mask per object) grows with objects x pixels. Here a plane larger
than one tile (:class:`~napari_sam.tiles.TileGrid`) is segmented tile by tile at
native resolution, with memory bounded by the tile, not the plane:

1. **Tiles.** Each tile's window (its core plus the halo) is read from a
   :class:`~napari_sam.source.PlaneSource` (with the whole plane's intensity
   scaling) and segmented by :func:`~napari_sam.automatic.generate_masks` (either
   strategy, every parameter), giving window-sized labels. Tiles are independent:
   they can run on Dask workers, and each result can be kept in a *parts* folder
   (zarr) so that a cancelled or crashed run does only the tiles it had not finished.
   Tiles whose window is one flat colour are skipped (background).
2. **Stitching**, in raster order, one window at a time into the output (numpy, or
   a zarr array on disk for planes whose labels do not fit in memory):

   * An object belongs to the tile whose core holds its centre (its centroid):
     objects up to ``2 x halo`` across are whole in that window, and none is
     counted twice. (A larger object is cut by the window edge.)
   * Painting never overwrites an object painted by an earlier tile.
   * An object that overlaps one painted earlier by most (:data:`DUPLICATE_SHARE`) of
     the smaller of the two is the same object seen from two tiles (its centre moved
     across the seam, its outline a little different): it is not painted again, so the
     object is not split between two labels. An object that was cut by a window edge
     joins the object it overlaps (by :data:`MERGE_SHARE` of the smaller of the two),
     so large objects that cross a seam become one label.

Labels are 1, 2, ... in the order objects are painted (raster order of tiles).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Cancelled, SamkitError
from ..tiles import Tile, TileGrid

#: Two objects that share at least this share of the smaller one's pixels are one object.
DUPLICATE_SHARE = 0.5
#: An object cut by a window edge (or one touching a cut object) joins the object it overlaps
#: by at least this share of the smaller of the two (within the object's bounding box).
MERGE_SHARE = 0.2
#: Folder attribute naming what a parts folder holds.
PARTS_ATTRIBUTE = "napari_samkit_tiles"


@dataclass
class TiledResult:
    """What :func:`segment_tiled` did.

    Attributes:
        labels: the label image (the ``output`` array when one was given).
        tiles: number of tiles; ``segmented`` (with objects), ``reused`` (from the parts
            folder), ``empty`` (no object, or one flat colour: not segmented) of them.
        objects: labels painted.
        seconds: wall time.
        timings: seconds in ``read``, ``segment`` and ``stitch``.
    """

    labels: object
    tiles: int
    segmented: int = 0
    reused: int = 0
    empty: int = 0
    objects: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=lambda: {"read": 0.0, "segment": 0.0, "stitch": 0.0})


# --------------------------------------------------------------------------- one tile


def segment_tile(source, tile: Tile, model, amg: dict, *, strategy: str = "auto", precision: str | None = None,
                 store=None, key=None, cancel: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None, timings: dict | None = None) -> np.ndarray:
    """Window-sized uint32 labels of one tile (0 for a flat window).

    Args:
        source: the plane (:class:`~napari_sam.source.PlaneSource`).
        tile: the tile (its ``window`` is segmented).
        model: a loaded model. amg: :func:`generate_masks` parameters.
        store, key: embedding store and the plane's key (the tile's embeddings are
            keyed by their windows in the plane).
    """
    from . import generate_masks, masks_to_labels

    started = time.perf_counter()
    x0, y0, x1, y1 = tile.window
    rgb = source.rgb(tile.window)
    read = time.perf_counter()
    if timings is not None:
        timings["read"] = timings.get("read", 0.0) + read - started
    if float(rgb.max()) - float(rgb.min()) < 1.0:  # one flat colour: nothing to find
        return np.zeros((y1 - y0, x1 - x0), np.uint32)
    tile_key = None if key is None else key.at(plane=key.plane, window=tile.window)
    cx0, cy0, cx1, cy1 = tile.core
    records = generate_masks(rgb, model, strategy=strategy, precision=precision, store=store, key=tile_key,
                             cancel=cancel, progress=progress, core=(cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0), **amg)
    labels = masks_to_labels(records, shape=(y1 - y0, x1 - x0))
    if timings is not None:
        timings["segment"] = timings.get("segment", 0.0) + time.perf_counter() - read
    return labels.astype(np.uint32, copy=False)


# --------------------------------------------------------------------------- stitching


class Stitcher:
    """Paints window labels of tiles, in raster order, into one label image (module docstring).

    Args:
        output: ``H x W`` integer array (numpy or zarr) to paint into, all 0 at first.
        grid: the tiles.
    """

    def __init__(self, output, grid: TileGrid) -> None:
        self.output = output
        self.grid = grid
        self.next_id = 1
        self._cut: set[int] = set()

    def add(self, tile: Tile, labels: np.ndarray) -> int:
        """Paint the objects of ``tile`` (its window-sized ``labels``) that it owns; returns how many
        new labels were made."""
        from scipy import ndimage

        labels = np.asarray(labels)
        if not labels.any():
            return 0
        x0, y0, x1, y1 = tile.window
        painted = np.asarray(self.output[y0:y1, x0:x1]).copy()
        slices = ndimage.find_objects(labels)
        ids = [i + 1 for i, s in enumerate(slices) if s is not None]
        centres = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids)
        left, top, right, bottom = tile.cut_edges(self.grid.shape)
        h, w = labels.shape
        made = 0
        changed = False
        for object_id, (cy, cx) in zip(ids, centres):
            if not tile.owns(np.float64(cx + x0), np.float64(cy + y0)):
                continue
            sl = slices[object_id - 1]
            mask = labels[sl] == object_id
            cut = ((left and sl[1].start == 0) or (top and sl[0].start == 0) or (right and sl[1].stop == w)
                   or (bottom and sl[0].stop == h))
            view = painted[sl]
            under = view[mask]
            target = 0
            if under.any():
                found, counts = np.unique(under[under > 0], return_counts=True)
                best = int(np.argmax(counts))
                other, overlap = int(found[best]), int(counts[best])
                smaller = min(int(mask.sum()), int((painted == other).sum()))
                joins = cut or other in self._cut
                if overlap >= DUPLICATE_SHARE * smaller:
                    if not joins:
                        continue  # the same object, already painted from the tile next door
                    target = other
                elif joins and overlap >= MERGE_SHARE * smaller:
                    target = other
            free = mask & (view == 0)
            if not free.any():
                continue
            if target == 0:
                target = self.next_id
                self.next_id += 1
                made += 1
            view[free] = target
            changed = True
            if cut:
                self._cut.add(target)
        if changed:
            self.output[y0:y1, x0:x1] = painted
        return made


# --------------------------------------------------------------------------- parts (resume)


class TileParts:
    """Finished tiles' labels in a folder (zarr), so that a rerun does only the rest.

    The folder is bound to a description of the run (image, model, settings, grid):
    opened for another one, it is emptied.
    """

    def __init__(self, path: str | os.PathLike, description: dict, *, writer: bool = False) -> None:
        """Open (or make) the parts folder of a run; ``writer``: a Dask worker's handle on a folder
        its client made (never emptied)."""
        import zarr

        self.path = Path(path)
        self.description = json.loads(json.dumps(description, sort_keys=True, default=str))
        if writer:
            self._group = zarr.open_group(str(self.path), mode="r+")
            return
        group = None
        if (self.path / "zarr.json").is_file():
            try:
                group = zarr.open_group(str(self.path), mode="r+")
                if dict(group.attrs).get(PARTS_ATTRIBUTE) != self.description:
                    group = None
            except Exception:  # noqa: BLE001 - unreadable: start afresh
                group = None
        if group is None:
            if self.path.exists():
                shutil.rmtree(self.path)
            group = zarr.open_group(str(self.path), mode="w")
            group.attrs[PARTS_ATTRIBUTE] = self.description
        self._group = group

    def get(self, tile: Tile) -> np.ndarray | None:
        try:
            array = self._group[f"tile-{tile.index}"]
        except Exception:  # noqa: BLE001 - not there (or damaged): compute it again
            return None
        if not dict(array.attrs).get("complete"):
            return None
        try:
            return np.asarray(array[...])
        except Exception:  # noqa: BLE001
            return None

    def put(self, tile: Tile, labels: np.ndarray) -> None:
        name = f"tile-{tile.index}"
        array = self._group.create_array(name, shape=labels.shape, dtype=labels.dtype,
                                         chunks=labels.shape, overwrite=True)
        array[...] = labels
        array.attrs["complete"] = True

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def run_description(source, model, amg: dict, strategy: str, precision: str, grid: TileGrid) -> dict:
    """What a tiled run depends on (the parts folder's binding)."""
    from .. import __version__
    from ..embedding import model_identity

    return {"image": source.signature, "view": source.view, "model": model_identity(model), "amg": amg,
            "strategy": strategy, "precision": precision, "tile": grid.tile, "halo": grid.halo,
            "shape": list(grid.shape), "version": __version__}


# --------------------------------------------------------------------------- the run


def segment_tiled(
    image,
    model,
    *,
    amg: dict | None = None,
    tile: int | None = None,
    halo: int | None = None,
    strategy: str = "auto",
    precision: str | None = None,
    output=None,
    parts: str | os.PathLike | None = None,
    store=None,
    key=None,
    channel_axis: int | None = None,
    channels=None,
    progress: Callable[[float, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    client=None,
    worker_settings=None,
    worker_threads: int | None = None,
) -> TiledResult:
    """Segment everything in a 2D plane of any size, tile by tile (see the module docstring).

    Args:
        image: a 2D image (numpy, dask, zarr, a lazily read TIFF, pyramid levels) or a
            :class:`~napari_sam.source.PlaneSource`.
        model: a loaded model.
        amg: :func:`~napari_sam.automatic.generate_masks` parameters (default: its defaults).
        tile, halo: tile core side and overlap in pixels (None: the model's defaults,
            :func:`~napari_sam.tiles.default_tiling`).
        strategy: ``"auto"``, ``"points"`` or ``"boxes"`` (see ``generate_masks``).
        precision: encoder precision.
        output: an ``H x W`` integer array to paint into (numpy or zarr; all zeros);
            default a new uint32 numpy array.
        parts: a folder keeping each finished tile's labels: a rerun with the same
            image, model and settings reuses them (removed by the caller when done).
        store, key: embedding store and the plane's key (tile embeddings are stored by window).
        channel_axis, channels: how the plane becomes RGB.
        progress: ``progress(tiles_done, n_tiles)``, fractional within a tile.
        cancel: polled between and inside tiles; True raises :class:`~napari_sam.errors.Cancelled`
            (finished tiles stay in ``parts`` and their embeddings in ``store``).
        client: a ``distributed.Client``: tiles run as Dask tasks, each writing its labels to
            ``parts`` (required, on a file system the workers see); ``image`` is then the path
            of the image file, which each worker opens itself (see :mod:`napari_sam.cluster`).
        worker_settings: with ``client``, the :class:`~napari_sam.image_task.SegmentSettings`
            the workers load the model with (model, model_type, device).
        worker_threads: with ``client``, torch threads per task (None: each worker's CPUs
            shared among its Dask threads).

    Returns:
        :class:`TiledResult`.
    """
    from ..precision import resolve_precision
    from ..source import PlaneSource
    from .generator import uses_point_grid
    from .parameters import amg_defaults, check_amg_parameters

    started = time.perf_counter()
    path = None
    if isinstance(image, (str, os.PathLike)):
        from ..io import open_image

        path, image = Path(image), open_image(image)
    if client is not None and (path is None or parts is None or worker_settings is None):
        raise SamkitError("Tiles on Dask need the image's path, a parts folder the workers see and the "
                          "workers' model settings (image=PATH, parts=FOLDER, worker_settings=...).")
    source = PlaneSource.of(image, channel_axis, channels)
    grid = TileGrid.for_model(source.shape, model.spec, tile, halo)
    settings = {**amg_defaults(), **check_amg_parameters(**(amg or {}))}
    precision = resolve_precision(precision, model.spec, encoder_bound=not uses_point_grid(model, strategy))
    if output is None:
        output = np.zeros(source.shape, np.uint32)
    elif tuple(output.shape) != source.shape:
        raise SamkitError(f"The output is {tuple(output.shape)} but the plane is {source.shape}.")
    result = TiledResult(output, len(grid))
    if store is not None and key is None:  # one key for the plane: every tile's embeddings go to one store
        from ..embedding import EmbeddingKey

        key = EmbeddingKey.create(source.signature, model, precision, view=source.view)
    keeper = TileParts(parts, run_description(source, model, settings, strategy, precision, grid)) if parts else None
    stitcher = Stitcher(output, grid)
    if client is not None:
        from ..cluster import run_tiles

        tiles = run_tiles(client, path, source, grid, worker_settings, settings, strategy, precision, keeper,
                          progress, cancel, result, worker_threads)
    else:
        tiles = _run_here(source, grid, model, settings, strategy, precision, keeper, store, key, progress, cancel,
                          result)
    for tile, labels in tiles:
        begin = time.perf_counter()
        result.objects += stitcher.add(tile, labels)
        result.timings["stitch"] += time.perf_counter() - begin
    result.seconds = time.perf_counter() - started
    return result


def _run_here(source, grid, model, settings, strategy, precision, keeper, store, key, progress, cancel, result):
    """``(tile, labels)`` of every tile in raster order, segmented in this process."""
    n = len(grid)
    for tile in grid:
        if cancel is not None and cancel():
            raise Cancelled(f"Segment everything was cancelled after {tile.index} of {n} tiles.")
        labels = keeper.get(tile) if keeper is not None else None
        if labels is not None:
            result.reused += 1
        else:
            def tile_progress(done, total, index=tile.index):
                if progress is not None and total:
                    progress(index + min(done / total, 1.0), n)

            labels = segment_tile(source, tile, model, settings, strategy=strategy, precision=precision,
                                  store=store, key=key, cancel=cancel, progress=tile_progress,
                                  timings=result.timings)
            if labels.any():
                result.segmented += 1
            else:
                result.empty += 1
            if keeper is not None:
                keeper.put(tile, labels)
        if progress is not None:
            progress(tile.index + 1, n)
        yield tile, labels


def label_everything(
    image,
    model,
    *,
    amg: dict | None = None,
    strategy: str = "auto",
    precision: str | None = None,
    tile: int | None = None,
    halo: int | None = None,
    output=None,
    parts: str | os.PathLike | None = None,
    store=None,
    key=None,
    channel_axis: int | None = None,
    channels=None,
    progress: Callable[[float, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    client=None,
    path: str | os.PathLike | None = None,
    worker_settings=None,
    worker_threads: int | None = None,
) -> np.ndarray:
    """Segment everything in a 2D plane into labels: the one entry point of the CLI, the widget and batches.

    A plane that fits in one tile (``tile + 2 x halo``, see :class:`~napari_sam.tiles.TileGrid`)
    is segmented whole, exactly as :func:`~napari_sam.automatic.generate_masks` and
    :func:`~napari_sam.automatic.masks_to_labels`; a larger one tile by tile
    (:func:`segment_tiled`), on Dask with ``client`` (then ``path`` is the image's file,
    which the workers open). Arguments as :func:`segment_tiled`.

    Returns:
        ``H x W`` labels (uint32; the ``output`` array when one was given).
    """
    from ..source import PlaneSource

    source = PlaneSource.of(image, channel_axis, channels)
    grid = TileGrid.for_model(source.shape, model.spec, tile, halo)
    if not grid.single:
        on_dask = {} if client is None else dict(client=client, worker_settings=worker_settings,
                                                 worker_threads=worker_threads)
        return segment_tiled(path if client is not None else source, model, amg=amg, tile=tile, halo=halo,
                             strategy=strategy, precision=precision, output=output, parts=parts, store=store,
                             key=key, progress=progress, cancel=cancel, channel_axis=channel_axis,
                             channels=channels, **on_dask).labels
    from . import generate_masks, masks_to_labels

    records = generate_masks(source.rgb(), model, strategy=strategy, precision=precision, progress=progress,
                             cancel=cancel, store=store, key=key, **(amg or {}))
    labels = masks_to_labels(records, shape=source.shape)
    if output is None:
        return labels
    output[...] = labels
    return output
