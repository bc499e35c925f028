"""Zoomed prompting: a prompt on a small object is answered from a window of the image.

A model with a small encoder input (LiteMedSAM: 256 px) sees a 20 px nucleus of a
1,000 px image as 5 px: too small to segment, and far smaller than what it was
fine-tuned on. :class:`~napari_sam.predictor.Predictor` therefore answers such a
prompt from a **window** of the image in which the object has the size the model
segments best, chosen by the same rule as box refinement and the training views
(:func:`napari_sam.automatic.windows.plan_windows`: the object about ``S / 4`` px
at the input, windows on a shared ladder of sizes and a grid of positions, so the
clicks on one object, and on its neighbours, reuse one window embedding).

* A **box** (with or without points) gives its window at once.
* **Clicks alone** do not say how large the object is: the prompt is answered on a
  first view (the whole image, or for an image far larger than the input a window
  of the input's size around the clicks, at native resolution), the mask's box
  gives the window, and the prompt is answered again there; at most
  :data:`MAX_PASSES` views, stopping when the window no longer changes. A
  box-only model's clicks (the box search of :mod:`napari_sam.clicks`) are
  answered on the first view only: zooming them did not help (measured on DSB 2018
  nuclei, one click: 0.671 on the whole image, 0.638 zoomed).
* **Low-resolution logits** returned by a zoomed prediction are in its window's
  frame. :class:`LogitFrames` remembers which window each returned logit map
  belongs to, so when it is fed back as ``mask_input`` (the interactive loop), the
  next prediction is decoded in the same window.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from .embed import Window

#: Views tried for clicks without a box (each may cost one encoder run, cached).
MAX_PASSES = 3
#: A first view of the whole image is used when the image is at most this many
#: times the encoder input (else a window of input size around the clicks).
WHOLE_FIRST_VIEW_MAX_DOWNSCALE = 2.0


def prompt_window(box: np.ndarray, shape: tuple[int, int], image_size: int) -> Window | None:
    """The window in which an object with bounding ``box`` is answered, or None for the whole image.

    Args:
        box: ``4`` (x0, y0, x1, y1) pixels of the object (or of its prompts).
        shape: ``(H, W)`` of the image.
        image_size: side ``S`` of the encoder input.
    """
    from .automatic.windows import plan_windows

    h, w = shape
    windows, _ = plan_windows(np.asarray(box, dtype=np.float64).reshape(1, 4), (h, w), image_size)
    return None if windows[0] == (0, 0, w, h) else tuple(int(v) for v in windows[0])


def first_view(points: np.ndarray, shape: tuple[int, int], image_size: int) -> Window | None:
    """The first view for clicks alone: None (the whole image) or a window of side ``S`` around them.

    Args:
        points: ``N x 2`` (x, y) positive clicks (at least one).
    """
    h, w = shape
    if max(h, w) <= WHOLE_FIRST_VIEW_MAX_DOWNSCALE * image_size:
        return None
    centre = (points.min(0) + points.max(0)) / 2.0
    side_x, side_y = min(w, image_size), min(h, image_size)
    x0 = int(np.clip(round(centre[0] - side_x / 2), 0, w - side_x))
    y0 = int(np.clip(round(centre[1] - side_y / 2), 0, h - side_y))
    return (x0, y0, x0 + side_x, y0 + side_y)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """``4`` (x0, y0, x1, y1) box (ends exclusive) of an ``H x W`` bool mask, None if empty."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def union_box(box: np.ndarray, points: np.ndarray | None) -> np.ndarray:
    """``box`` grown to hold every point of ``N x 2`` ``points`` (one pixel around each)."""
    if points is None or len(points) == 0:
        return np.asarray(box, dtype=np.float64)
    lo = np.minimum(box[:2], points.min(0))
    hi = np.maximum(box[2:], points.max(0) + 1.0)
    return np.concatenate([lo, hi])


def _fingerprint(logits: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(logits, dtype=np.float32).tobytes(), digest_size=16).digest()


class LogitFrames:
    """Which window each low-resolution logit map a predictor returned belongs to.

    Bounded (the last ``size`` maps); a map not found is in the whole image's frame.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[bytes, Window | None] = OrderedDict()
        self._lock = threading.Lock()  # the annotator predicts on the GUI thread and in a worker

    def remember(self, low_res: np.ndarray, window: Window | None) -> None:
        """Record every ``256 x 256`` map of ``... x 256 x 256`` logits as decoded in ``window``."""
        keys = [_fingerprint(logits) for logits in np.asarray(low_res).reshape(-1, *np.shape(low_res)[-2:])]
        with self._lock:
            for key in keys:
                self._items[key] = window
                self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def window_of(self, logits: np.ndarray) -> Window | None:
        """The window ``256 x 256`` ``logits`` were decoded in (None: the whole image, or not known)."""
        key = _fingerprint(logits)
        with self._lock:
            return self._items.get(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
