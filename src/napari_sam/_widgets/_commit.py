"""Writing objects into a napari Labels layer: one undoable step, never losing data."""

from __future__ import annotations

import numpy as np

from ..annotation import CommitResult, PlaneGeometry, commit_masks, next_free_id


def write_objects(layer, geometry: PlaneGeometry, masks: np.ndarray, mode: str, region=None) -> CommitResult:
    """Commit ``K x H x W`` masks into the plane of ``geometry`` of a Labels layer.

    The ids start above every label of the whole layer. The change goes through
    ``Labels.data_setitem`` inside ``block_history``, so napari's undo (Ctrl+Z in
    the layer, or ``layer.undo()``) reverts the whole commit in one step.

    Args:
        region: ``(x0, y0, x1, y1)`` of the plane the ``K x h x w`` masks cover (None: the
            whole plane): a large image's objects are written region by region.
    """
    plane = geometry.read(layer.data)
    x0 = y0 = 0
    if region is not None:
        x0, y0, x1, y1 = region
        plane = plane[y0:y1, x0:x1]
    result = commit_masks(plane, masks, mode, next_free_id(layer.data))
    rows, cols = np.nonzero(result.changed)
    if len(rows):
        with layer.block_history():
            layer.data_setitem(geometry.volume_indices(rows + y0, cols + x0), result.plane[rows, cols])
    return result


def commit_message(layer_name: str, result: CommitResult) -> str:
    """E.g. ``"Committed 3 objects to 'SAM labels' (ids 2-4)."``, with skipped objects explained."""
    ids = result.written_ids.tolist()
    which = "" if not ids else f" (id {ids[0]})" if len(ids) == 1 else f" (ids {ids[0]}-{ids[-1]})"
    message = f"Committed {len(ids)} object{'' if len(ids) == 1 else 's'} to '{layer_name}'{which}."
    if len(result.skipped):
        message += (f" {len(result.skipped)} object(s) touched existing labels and were not written "
                    "(their prompts stay; change the commit mode to write them).")
    return message
