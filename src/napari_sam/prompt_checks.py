"""Validation of prompts as people give them: boxes, points, labels, mask inputs.

One place for the checks the :class:`~napari_sam.predictor.Predictor`, the box
refinement (:func:`~napari_sam.automatic.segment_boxes`) and the command line
share. Every problem is a :class:`~napari_sam.errors.PromptError` that says what
was given and what is expected. Coordinates are ``(x, y)`` pixels of the image.
"""

from __future__ import annotations

import numpy as np

from .errors import PromptError


def _numbers(value, what: str, example: str) -> np.ndarray:
    """``value`` as a float64 array, or a PromptError for text, ragged lists and objects."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be numbers, e.g. {example}; got {value!r:.80}.") from None
    return array


def check_boxes(boxes, shape: tuple[int, int]) -> np.ndarray:
    """Validate ``N x 4`` (x0, y0, x1, y1) pixel boxes and clip them to the image.

    Corners may come in any order. Raises :class:`PromptError` for text, a wrong
    shape, no boxes, NaN or infinite values, boxes entirely outside the ``H x W``
    image and boxes of zero width or height inside it.

    Returns:
        ``N x 4`` float64 boxes with ``x0 < x1``, ``y0 < y1``, inside ``[0, W] x [0, H]``.
    """
    array = _numbers(boxes, "Box coordinates", "[x0, y0, x1, y1]") if np.size(boxes) else np.zeros((0, 4))
    if array.ndim == 1 and array.size == 4:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise PromptError(
            f"A box is (x0, y0, x1, y1): give 4 numbers, or an N x 4 array of boxes; got shape {np.shape(boxes)}."
        )
    if array.shape[0] == 0:
        raise PromptError("No boxes were given; give at least one (x0, y0, x1, y1) box.")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(1))[0])
        raise PromptError(f"Box {bad} has a NaN or infinite coordinate ({array[bad].tolist()}); coordinates must "
                          "be finite.")
    lo = np.minimum(array[:, :2], array[:, 2:])
    hi = np.maximum(array[:, :2], array[:, 2:])
    h, w = shape
    outside = (hi[:, 0] <= 0) | (hi[:, 1] <= 0) | (lo[:, 0] >= w) | (lo[:, 1] >= h)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise PromptError(
            f"{int(outside.sum())} box(es) lie entirely outside the {w} x {h} (width x height) image, "
            f"e.g. box {bad} = {array[bad].tolist()}. Boxes are (x0, y0, x1, y1) in pixels."
        )
    lo = np.maximum(lo, 0.0)
    hi = np.minimum(hi, [w, h])
    flat = (hi - lo < 1.0).any(1)
    if flat.any():
        bad = int(np.flatnonzero(flat)[0])
        raise PromptError(
            f"{int(flat.sum())} box(es) have zero width or height inside the image, e.g. box {bad} = "
            f"{array[bad].tolist()}; a box needs at least one pixel along x and y."
        )
    return np.concatenate([lo, hi], axis=1)


def check_points(points, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate clicks: ``N x 2`` (x, y) points (or one ``(x, y)``) and ``N`` labels (1 / 0).

    Returns:
        ``(points N x 2 float64, labels N int64)``.
    """
    coords = _numbers(points, "Point coordinates", "[[x, y], ...]")
    if coords.size == 0:
        raise PromptError("points is empty; give at least one (x, y) point or use a box.")
    if coords.ndim == 1 and coords.shape[0] == 2:
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise PromptError(
            f"Points are an N x 2 array of (x, y) pixel coordinates; got shape {coords.shape}"
            + (" (transpose it if it holds x in one row and y in the other)."
               if coords.ndim == 2 and coords.shape[0] == 2 else ".")
        )
    if not np.isfinite(coords).all():
        raise PromptError("Point coordinates must be finite numbers (found NaN or infinity).")
    if labels is None:
        raise PromptError("points need labels: 1 for foreground, 0 for background, one per point.")
    label_array = _numbers(labels, "Point labels", "[1, 0]").reshape(-1)
    if label_array.shape[0] != coords.shape[0]:
        raise PromptError(f"Got {coords.shape[0]} points but {label_array.shape[0]} labels; give one label per point.")
    if not np.isin(label_array, (0, 1)).all():
        raise PromptError(
            f"Point labels must be 1 (foreground) or 0 (background); got {sorted(set(label_array.tolist()))}."
        )
    return coords, label_array.astype(np.int64)


def check_mask_input(mask_input, side: int, batch: int) -> np.ndarray:
    """Validate low-resolution logits fed back as a mask prompt.

    Returns:
        ``B x 1 x side x side`` float32 (``B`` = 1 or ``batch``).
    """
    array = _numbers(mask_input, "mask_input", "a previous prediction's low_res_logits")
    if array.ndim < 2 or array.shape[-2:] != (side, side):
        raise PromptError(
            f"mask_input must be {side} x {side} low-resolution logits (from a previous prediction's "
            f"low_res_logits); got shape {array.shape}."
        )
    array = array.reshape(-1, 1, side, side).astype(np.float32)
    if array.shape[0] not in (1, batch):
        raise PromptError(f"Got {array.shape[0]} mask inputs for {batch} prompts; give one, or one per box.")
    return array


#: Logit thresholds beyond this are no threshold at all (the decoder's logits stay well inside).
MAX_MASK_THRESHOLD = 20.0


def check_mask_threshold(value) -> float | None:
    """A refinement mask threshold (logit), or None for the default.

    Raises:
        PromptError: not a number, NaN, or beyond +-:data:`MAX_MASK_THRESHOLD`.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"mask_threshold must be a number (a logit; 0 is Meta's), got {value!r}.") from None
    if not -MAX_MASK_THRESHOLD <= number <= MAX_MASK_THRESHOLD:  # (NaN fails this too)
        raise PromptError(f"mask_threshold must be a logit between {-MAX_MASK_THRESHOLD:g} and {MAX_MASK_THRESHOLD:g} "
                          f"(0 is Meta's; -1 grows masks a little); got {value!r}.")
    return number
