"""Stage 2: boxes or rough labels -> instance labels, refined by the model.

Every box (from a detector, a Shapes layer, the box proposals of
:mod:`.proposals`, or the bounding box of an object of a rough label image) is one
object. The model sees each object through a **window** of the image:

* Windows (:mod:`.windows`). Small objects are seen through zoomed windows of
  the image, so that they are about ``S / 4`` pixels at the encoder input
  (``S = model.spec.image_size``); nearby boxes share a window, so the encoder
  runs far fewer times than there are objects.
* Decoding. Each window is embedded once (optionally through an
  :class:`~napari_sam.embedding.EmbeddingCache`) and its boxes are decoded in
  batches (single-mask output for box prompts, as LiteMedSAM was trained), each
  box on the embedding tokens under its region of interest only (with
  :data:`TOKEN_CONTEXT`; rough-label mask prompts use the whole grid). The
  low-resolution logits are sampled bilinearly (``grid_sample``) straight at the
  image pixels of each object's region of interest: the box grown by half its
  side on every side (and at least 4 pixels). A mask is never larger than that
  region, which also stops leaks into far-away structures.

Overlaps in the label image: a pixel claimed by several objects goes to the
object whose mask logit is highest there (the most confident one), so touching
objects split along the line where their logits are equal and two ids never merge.
Box ``i`` becomes label ``i + 1``; an object whose mask is empty (or fully claimed
by more confident neighbours) is absent from the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import clicks, zoom
from ..embed import compute_embeddings
from ..embedding import EmbeddingCache, EmbeddingKey
from ..errors import PromptError
from ..inference import decode_boxes_in_window, decode_prompts, sample_logits
from ..models.sam import SamModel
from ..precision import resolve_precision
from ..prompt_checks import check_boxes, check_mask_threshold
from ..source import PlaneSource
from . import amg
from .windows import plan_windows

#: Input pixels of context around each object's region when a box is decoded on the
#: embedding tokens under it only (plus :data:`napari_sam.clicks.WINDOW_MARGIN_TOKENS`)
#: instead of the whole 64 x 64 grid: the decoder's cost grows with the tokens it sees.
#: Measured on LiteMedSAM: immunohistochemistry 42.4 s -> 27.5 s (23.9 s without this
#: context); zoomed ground-truth boxes within 0.02 mean IoU of the whole grid on nine
#: annotated images (phase-contrast E. coli 0.539 -> 0.518, H&E 0.741/0.775/0.729 ->
#: 0.729/0.770/0.715, nuclei and HeLa unchanged); see docs/automatic.md.
TOKEN_CONTEXT = 16.0
#: Default logit threshold of a refined mask. LiteMedSAM's masks from zoomed
#: windows are consistently a little small: their area is 93-94% of the ground
#: truth's on three sets of annotated nuclei, and thresholding at -1 instead of 0
#: raised the mean IoU with ground-truth boxes on every set (DSB 2018 0.820 ->
#: 0.843, nuclei planes 0.854 -> 0.881 and 0.858 -> 0.888, coins 0.947 -> 0.953).
BOX_MASK_THRESHOLD = -1.0


@dataclass(frozen=True)
class RefinedObject:
    """One refined object: its mask logits on a small region of the image.

    Attributes:
        logits: ``h x w`` float32 mask logits over ``region``, minus the mask
            threshold of the call: the mask is ``logits > 0``.
        region: ``(x0, y0, x1, y1)`` of the logits in the image (x1, y1 exclusive).
        predicted_iou: the model's estimate of the mask's IoU.
        stability_score: IoU of the masks at logit thresholds +1 and -1.
        window: ``(x0, y0, x1, y1)`` of the image window the encoder saw.
    """

    logits: np.ndarray
    region: tuple[int, int, int, int]
    predicted_iou: float
    stability_score: float
    window: tuple[int, int, int, int]

    @property
    def mask(self) -> np.ndarray:
        """``h x w`` bool mask over ``region``."""
        return self.logits > 0

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """``H x W`` bool mask on the whole image."""
        out = np.zeros(shape, dtype=bool)
        x0, y0, x1, y1 = self.region
        out[y0:y1, x0:x1] = self.mask
        return out


# ------------------------------------------------------------------ input checks


def mask_box(obj: RefinedObject) -> np.ndarray:
    """``4`` float64 box (x0, y0, x1, y1; ends exclusive) around a non-empty object mask."""
    x0, y0 = obj.region[:2]
    return zoom.mask_box(obj.mask) + np.array([x0, y0, x0, y0], dtype=np.float64)


# --------------------------------------------------------------------- decoding


def _regions(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Integer regions of interest: boxes grown by half their side (>= 4 px), inside the window."""
    grow = np.maximum(0.5 * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 4.0)
    lo = np.floor(boxes[:, :2] - grow[:, None])
    hi = np.ceil(boxes[:, 2:] + grow[:, None])
    x0, y0, x1, y1 = window
    lo = np.maximum(lo, [x0, y0])
    hi = np.minimum(hi, [x1, y1])
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


def _decode_window(
    model: SamModel,
    embedding,
    boxes: np.ndarray,
    window: tuple[int, int, int, int],
    mask_inputs: np.ndarray | None,
    stability_offset: float,
    mask_threshold: float,
) -> list[RefinedObject]:
    """Decode a batch of boxes (image coordinates) on one window's embedding."""
    wx0, wy0, wx1, wy1 = window
    sx = embedding.input_size[1] / (wx1 - wx0)
    sy = embedding.input_size[0] / (wy1 - wy0)
    local = boxes - np.array([wx0, wy0, wx0, wy0], dtype=np.float64)
    local *= np.array([sx, sy, sx, sy])
    regions = _regions(boxes, window)
    boxes_t = torch.from_numpy(local).float()
    if mask_inputs is None:
        # Each box on the embedding tokens under its region (see TOKEN_CONTEXT).
        reach = (regions - np.array([wx0, wy0, wx0, wy0], dtype=np.float64)) * np.array([sx, sy, sx, sy])
        reach += np.array([-1.0, -1.0, 1.0, 1.0]) * TOKEN_CONTEXT
        low_res = torch.empty(len(boxes), 1, 256, 256)
        iou = torch.empty(len(boxes), 1)
        grid = embedding.features.shape[-1]
        for rows, tokens in clicks.window_groups(reach, embedding.image_size, grid):
            rows_t = torch.from_numpy(rows)
            low_res[rows_t], iou[rows_t] = decode_boxes_in_window(model, embedding, boxes_t[rows_t], tokens.rows,
                                                                  tokens.cols)
    else:  # mask prompts are dense over the whole grid
        low_res, iou = decode_prompts(model, embedding, boxes=boxes_t, mask_input=torch.from_numpy(mask_inputs).float(),
                                      multimask=False)
    patches = sample_logits(low_res, regions, window, embedding.input_size, embedding.image_size)
    result = []
    for k, patch in enumerate(patches):
        if mask_threshold:
            patch = patch - mask_threshold
        stability = amg.calculate_stability_score(patch, 0.0, stability_offset)
        result.append(
            RefinedObject(
                logits=np.array(patch.numpy(), dtype=np.float32),  # a copy: frees the batch
                region=tuple(int(v) for v in regions[k]),
                predicted_iou=float(iou[k, 0]),
                stability_score=float(torch.nan_to_num(stability, nan=0.0)),
                window=window,
            )
        )
    return result


def _window_mask_inputs(masks: Sequence[np.ndarray], regions: np.ndarray, window, input_size, image_size) -> np.ndarray:
    """Rough masks (bool, over ``regions``) -> ``B x 1 x 256 x 256`` mask prompts of the window."""
    wx0, wy0, wx1, wy1 = window
    canvas = torch.zeros(len(masks), 1, wy1 - wy0, wx1 - wx0)
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, regions)):
        cx0, cy0, cx1, cy1 = max(x0, wx0), max(y0, wy0), min(x1, wx1), min(y1, wy1)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        part = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        canvas[k, 0, cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0] = torch.from_numpy(part.astype(np.float32))
    resized = F.interpolate(canvas, input_size, mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))
    low = F.interpolate(padded, (256, 256), mode="bilinear", align_corners=False)
    # Logits of the scale the decoder returns: +-10 inside/outside, 0 on the edge.
    return ((low - 0.5) * 20.0).numpy()


def refine_boxes(
    image: np.ndarray,
    boxes,
    model: SamModel,
    *,
    batch_size: int = 32,
    zoom: bool = True,
    object_size: float | None = None,
    max_upscale: float = 8.0,
    max_windows: int | None = None,
    mask_prompts: Sequence[tuple[np.ndarray, tuple[int, int, int, int]]] | None = None,
    box_iterations: int = 1,
    stability_score_offset: float = 1.0,
    mask_threshold: float = BOX_MASK_THRESHOLD,
    precision: str | None = None,
    cache: EmbeddingCache | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    channel_axis: int | None = None,
    rgb_ready: bool = False,
    store=None,
    key: EmbeddingKey | None = None,
) -> list[RefinedObject]:
    """Segment one object per box, zoomed as the module docstring describes.

    Args:
        image: a 2D image (any input of :func:`napari_sam.preprocess.as_rgb`), or
            its ``H x W x 3`` RGB with ``rgb_ready=True``, or a
            :class:`~napari_sam.source.PlaneSource` (large images: only the windows
            the boxes need are read).
        boxes: ``N x 4`` (x0, y0, x1, y1) pixel boxes.
        model: a loaded :class:`SamModel`.
        batch_size: boxes decoded together.
        zoom: embed zoomed windows for small objects (False: the whole image once).
        object_size: target box side at the encoder input, pixels (default ``S / 4``).
        max_upscale: largest magnification of a window.
        max_windows: at most this many encoder windows (None or 0: as many as the zoom
            needs; see :func:`.windows.plan_windows`).
        mask_prompts: optional ``N`` pairs ``(mask, region)``: a rough bool mask over
            the ``(x0, y0, x1, y1)`` region of the image, given as mask prompt.
        box_iterations: with 2 or more, each object is prompted again with the box
            around its mask (same window; the mask prompt only in the first
            round): loose boxes, as from proposals or rough labels, get tight.
        stability_score_offset: logit offset of the stability score.
        mask_threshold: logit above which a pixel is in the mask (Meta's: 0;
            default :data:`BOX_MASK_THRESHOLD`).
        precision: encoder precision (None: the configured default).
        cache: reuse window embeddings across calls.
        progress: ``progress(done, total)`` in objects, after each window.
        cancel: polled before each window; True raises :class:`amg.Cancelled`.
        store: an :class:`~napari_sam.store.EmbeddingStore`: window embeddings are
            read from it when there and written to it when computed.
        key: the key of ``image`` when it is a plane of a larger image (see
            :func:`~napari_sam.embed.compute_embeddings`).

    Returns:
        ``N`` :class:`RefinedObject`, in the order of ``boxes``.
    """
    source = PlaneSource.of(image, channel_axis, rgb_ready=rgb_ready)
    shape = source.shape
    boxes = check_boxes(boxes, shape)
    mask_threshold = check_mask_threshold(mask_threshold)
    if mask_prompts is not None and len(mask_prompts) != boxes.shape[0]:
        raise PromptError(f"Got {len(mask_prompts)} mask prompts for {boxes.shape[0]} boxes; give one per box.")
    spec = model.spec
    windows, owner = plan_windows(boxes, shape, spec.image_size, zoom=zoom, object_size=object_size,
                                  max_upscale=max_upscale, max_windows=max_windows)
    precision = resolve_precision(precision, model.spec)
    results: list[RefinedObject | None] = [None] * boxes.shape[0]
    done = 0
    inverted = _inverted_windows(model, source, boxes, owner, len(windows))
    embeddings = _window_embeddings(model, source, windows, inverted, store, cache, precision, cancel, key)
    for index, (window, embedding) in enumerate(zip(windows, embeddings)):
        members = np.flatnonzero(owner == index)
        for part in amg.batch_slices(members.size, batch_size):
            ids = members[part]
            masks = None
            if mask_prompts is not None:
                masks = _window_mask_inputs(
                    [mask_prompts[i][0] for i in ids], np.array([mask_prompts[i][1] for i in ids]),
                    window, embedding.input_size, spec.image_size,
                )
            objects = _decode_window(model, embedding, boxes[ids], window, masks, stability_score_offset,
                                     mask_threshold)
            for _ in range(box_iterations - 1):
                # Prompt again with the box around each mask (tightens loose boxes).
                tight = np.array([mask_box(obj) if obj.mask.any() else boxes[i] for i, obj in zip(ids, objects)])
                objects = _decode_window(model, embedding, tight, window, None, stability_score_offset,
                                         mask_threshold)
            for i, obj in zip(ids, objects):
                results[i] = obj
        done += members.size
        if progress is not None:
            progress(done, boxes.shape[0])
    return results  # type: ignore[return-value]


def _inverted_windows(model: SamModel, source, boxes: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """Which windows are embedded from the inverted plane: those whose boxes are mostly around dark
    objects in a gray plane, for a model that asks for it (see :mod:`napari_sam.polarity`)."""
    inverted = np.zeros(count, bool)
    if not model.spec.invert_dark_objects or not len(boxes):
        return inverted
    from ..polarity import dark_boxes

    dark = dark_boxes(source, boxes)
    for index in range(count):
        members = owner == index
        inverted[index] = members.any() and dark[members].mean() > 0.5
    return inverted


def _window_embeddings(model, source, windows, inverted, store, cache, precision, cancel, key):
    """The embeddings of ``windows`` in order; the ``inverted`` ones of the inverted plane (kept in
    memory only: a store holds the plane as it is)."""
    plain = [w for w, flip in zip(windows, inverted) if not flip]
    flipped = [w for w, flip in zip(windows, inverted) if flip]
    plain_embeddings = iter(compute_embeddings(model, source, windows=plain, store=store, cache=cache,
                                               precision=precision, cancel=cancel, key=key) if plain else ())
    flipped_embeddings = iter(compute_embeddings(
        model, source.inverted(), windows=flipped, cache=cache, precision=precision, cancel=cancel,
        key=None if key is None else key.inverted()) if flipped else ())
    for flip in inverted:
        yield next(flipped_embeddings if flip else plain_embeddings)


def paint_objects(
    objects: Sequence[RefinedObject], shape: tuple[int, int], ids: Sequence[int] | None = None
) -> np.ndarray:
    """Paint refined objects into ``H x W`` uint32 labels; the highest logit wins a pixel.

    Args:
        objects: from :func:`refine_boxes`.
        ids: label of each object (default ``1 .. N``).
    """
    labels = np.zeros(shape, dtype=np.uint32)
    best = np.zeros(shape, dtype=np.float32)  # a pixel needs logit > 0
    ids = range(1, len(objects) + 1) if ids is None else ids
    for label, obj in zip(ids, objects):
        x0, y0, x1, y1 = obj.region
        view_best = best[y0:y1, x0:x1]
        wins = obj.logits > view_best
        view_best[wins] = obj.logits[wins]
        labels[y0:y1, x0:x1][wins] = label
    return labels


def segment_boxes(
    image: np.ndarray,
    boxes,
    model: SamModel,
    *,
    batch_size: int = 32,
    zoom: bool = True,
    mask_threshold: float = BOX_MASK_THRESHOLD,
    precision: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    channel_axis: int | None = None,
    cache: EmbeddingCache | None = None,
    store=None,
    key: EmbeddingKey | None = None,
) -> np.ndarray:
    """Box prompts -> instance labels: box ``i`` becomes label ``i + 1``.

    Args:
        image: a 2D image (see :func:`napari_sam.preprocess.as_rgb`), or a
            :class:`~napari_sam.source.PlaneSource` of a large one.
        boxes: ``N x 4`` (x0, y0, x1, y1) in pixels of the image.
        model: a loaded :class:`SamModel`.
        batch_size, zoom, mask_threshold, precision, progress, cancel, cache, store,
            key: see :func:`refine_boxes`.
        channel_axis: axis of ``image`` that holds channels.

    Returns:
        ``H x W`` uint32 labels; overlaps go to the highest logit (module docstring).

    Raises:
        PromptError: boxes that are not ``N x 4``, not finite, empty or outside the image.
    """
    source = PlaneSource.of(image, channel_axis)
    objects = refine_boxes(source, boxes, model, batch_size=batch_size, zoom=zoom, mask_threshold=mask_threshold,
                           precision=precision, progress=progress, cancel=cancel, cache=cache, store=store, key=key)
    return paint_objects(objects, source.shape)


def segment_from_labels(
    image: np.ndarray,
    labels: np.ndarray,
    model: SamModel,
    *,
    use_mask_prompt: bool = False,
    box_margin: float = 0.1,
    box_iterations: int = 1,
    batch_size: int = 32,
    zoom: bool = True,
    mask_threshold: float = 0.0,
    precision: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    channel_axis: int | None = None,
    cache: EmbeddingCache | None = None,
    store=None,
    key: EmbeddingKey | None = None,
) -> np.ndarray:
    """Refine the objects of a rough label image; the output keeps their ids.

    Each object (all pixels of one non-zero id) gives its bounding box, grown by
    ``box_margin`` times its side plus one pixel on every side (rough labels are
    often a little too small, and a box that cuts the object gives a cut mask),
    as a box prompt and, with ``use_mask_prompt``, its pixels as a mask prompt
    (useful for SAM models; LiteMedSAM was trained without mask prompts).

    Args:
        image: a 2D image (see :func:`napari_sam.preprocess.as_rgb`), or a
            :class:`~napari_sam.source.PlaneSource` of a large one.
        labels: ``H x W`` integer labels of the same height and width, 0 background.
        use_mask_prompt: give each object's pixels as a mask prompt too.
        box_margin: growth of each bounding box per side, in box sides.
        box_iterations: rounds of prompting (the second with the box around the
            first mask; see :func:`refine_boxes`).
        mask_threshold: logit above which a pixel is in a mask. Meta's 0 here, not
            the calibrated -1 of :func:`segment_boxes`: boxes from rough labels are
            loose (``box_margin``), and at -1 masks grew past sharp object edges
            (synthetic discs: IoU 0.81).
        model, batch_size, zoom, precision, progress, cancel, cache, store, key: see
            :func:`refine_boxes`.

    Returns:
        ``H x W`` labels of the dtype of ``labels`` (uint32 for bool or signed
        input) with the same ids; overlaps go to the highest logit.

    Raises:
        PromptError: labels of another shape than the image, not integer, or empty.
    """
    from scipy import ndimage

    source = PlaneSource.of(image, channel_axis)
    labels = np.asarray(labels)
    if labels.shape != source.shape:
        raise PromptError(
            f"The labels are {labels.shape} but the image is {source.shape} (height x width); "
            "they must cover the same pixels."
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise PromptError(f"Labels must be integers (0 = background); got dtype {labels.dtype}.")
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.signedinteger):
        if (labels < 0).any():
            raise PromptError("Labels must not be negative (0 = background, 1, 2, ... objects).")
        out_dtype = np.uint32 if int(labels.max(initial=0)) < 2**32 else np.uint64  # ids are kept, never wrapped
    else:
        out_dtype = labels.dtype
    work = labels.astype(np.int64, copy=False)
    ids = np.unique(work)
    ids = ids[ids != 0]
    if ids.size == 0:
        raise PromptError("The labels have no object (all pixels are 0); paint or detect objects first.")
    # Bounding slices of every id (find_objects indexes by id - 1; compress ids first).
    dense = np.searchsorted(ids, work) + 1
    dense[work == 0] = 0
    slices = ndimage.find_objects(dense)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.float64)
    grow = box_margin * (boxes[:, 2:] - boxes[:, :2]) + 1.0
    boxes = np.concatenate([boxes[:, :2] - grow, boxes[:, 2:] + grow], axis=1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, labels.shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, labels.shape[0])
    prompts = None
    if use_mask_prompt:
        prompts = [(dense[s] == k + 1, (s[1].start, s[0].start, s[1].stop, s[0].stop)) for k, s in enumerate(slices)]
    objects = refine_boxes(source, boxes, model, batch_size=batch_size, zoom=zoom, mask_threshold=mask_threshold,
                           precision=precision, mask_prompts=prompts, box_iterations=box_iterations, progress=progress,
                           cancel=cancel, cache=cache, store=store, key=key)
    painted = paint_objects(objects, source.shape, ids=np.arange(1, ids.size + 1))
    out = np.zeros(labels.shape, dtype=out_dtype)
    nz = painted > 0
    out[nz] = ids[painted[nz] - 1].astype(out_dtype)
    return out
