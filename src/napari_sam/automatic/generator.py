"""Segment everything: prompt a grid of points, keep the good, distinct masks.

The algorithm is exactly that of Meta's ``SamAutomaticMaskGenerator`` (same
parameters, same filters in the same order, same output records), organised for
speed on a CPU:

* the decoder output of a batch stays a tensor; masks are filtered on the model's
  predicted IoU *before* the logits are upsampled, so only candidates that can
  survive are brought to full resolution (the official code upsamples all);
* stability scores, thresholds, boxes and the crop-edge filter run on whole
  batches (upsampling in bounded chunks);
* no run-length encoding: surviving masks stay boolean tensors in their crop's
  frame, boxes are computed with tensor ops, NMS is :func:`amg.batched_nms`;
* small-region removal labels all masks of a chunk in one ``scipy.ndimage.label``
  call.

Per mask point: the official generator transforms the grid points with
``ResizeLongestSide.apply_coords`` on the crop size and calls the predictor with
``multimask_output=True``; :func:`napari_sam.inference.to_input_coords` and
:func:`~napari_sam.inference.decode_prompts` do the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..embed import compute_embeddings
from ..embedding import EmbeddingKey, ImageEmbedding
from ..errors import SamkitError
from ..inference import decode_prompts, logits_to_image, to_input_coords
from ..models.sam import SamModel
from ..precision import resolve_precision
from ..preprocess import as_rgb
from . import amg
from .amg import Cancelled, MaskRecords
from .edges import MaskLogits
from .parameters import DEFAULT_MAX_WINDOWS, STRATEGIES

#: Logit threshold of a mask (Meta's ``Sam.mask_threshold``).
MASK_THRESHOLD = 0.0
#: Bytes of float32 logits upsampled at once: small enough that the stability
#: score and the binarisation read them from cache (32 MB: 1.9 s -> 1.2 s of a 16 x 16 run).
_UPSAMPLE_BYTES = 32 * 2**20
#: Bytes of int32 labels per connected-components call in small-region removal.
_LABEL_BYTES = 128 * 2**20


@dataclass
class _Run:
    """Settings and bookkeeping of one :func:`generate_masks` call."""

    model: SamModel
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    precision: str | None
    return_logits: bool
    progress: Callable[[int, int], None] | None
    cancel: Callable[[], bool] | None
    total: int
    timings: dict = field(default_factory=dict)
    done: int = 0
    last: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        for key in ("embed", "decode", "upsample_filter", "nms", "small_regions", "records"):
            self.timings.setdefault(key, 0.0)

    def lap(self, key: str) -> None:
        """Add the seconds since the last lap to stage ``key``."""
        now = time.perf_counter()
        self.timings[key] += now - self.last
        self.last = now

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("Segment everything was cancelled.")


def _check_parameters(
    points_per_side, points_per_batch, crop_n_layers, crop_n_points_downscale_factor, point_grids, strategy
) -> None:
    if strategy not in STRATEGIES:
        raise SamkitError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if point_grids is None and (points_per_side is None or int(points_per_side) < 1):
        raise SamkitError(f"points_per_side must be a positive integer, got {points_per_side!r}.")
    if int(points_per_batch) < 1:
        raise SamkitError(f"points_per_batch must be a positive integer, got {points_per_batch!r}.")
    if int(crop_n_layers) < 0:
        raise SamkitError(f"crop_n_layers must be 0 or more, got {crop_n_layers!r}.")
    if point_grids is None:
        for layer in range(int(crop_n_layers) + 1):
            if int(points_per_side / (crop_n_points_downscale_factor**layer)) < 1:
                raise SamkitError(
                    f"Crop layer {layer} gets no grid points ({points_per_side} points per side divided by "
                    f"{crop_n_points_downscale_factor}**{layer}); lower crop_n_points_downscale_factor or "
                    "crop_n_layers, or raise points_per_side."
                )
    if point_grids is not None and len(point_grids) < crop_n_layers + 1:
        raise SamkitError(
            f"point_grids has {len(point_grids)} grid(s) but crop_n_layers={crop_n_layers} needs "
            f"{crop_n_layers + 1} (one per layer, the whole image first)."
        )


def uses_point_grid(model: SamModel, strategy: str = "auto") -> bool:
    """Whether :func:`generate_masks` with ``strategy`` prompts ``model`` with a point grid
    (``auto``: for models trained on points) rather than box proposals."""
    return strategy == "points" or (strategy == "auto" and model.spec.automatic_strategy == "points")


def generate_masks(
    image: np.ndarray,
    model: SamModel,
    *,
    points_per_side: int | None = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    stability_score_offset: float = 1.0,
    box_nms_thresh: float = 0.7,
    crop_n_layers: int = 0,
    crop_nms_thresh: float = 0.7,
    crop_overlap_ratio: float = 512 / 1500,
    crop_n_points_downscale_factor: int = 1,
    point_grids: Sequence[np.ndarray] | None = None,
    min_mask_region_area: int = 0,
    polarity: str = "auto",
    object_diameter: float = 0.0,
    max_windows: int = DEFAULT_MAX_WINDOWS,
    strategy: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    precision: str | None = None,
    channel_axis: int | None = None,
    return_logits: bool = False,
    timings: dict | None = None,
    store=None,
    key: EmbeddingKey | None = None,
    core: tuple[int, int, int, int] | None = None,
) -> list[dict]:
    """Masks of everything in a 2D image, as Meta's ``SamAutomaticMaskGenerator``.

    Args:
        image: any 2D image :func:`napari_sam.preprocess.as_rgb` accepts
            (``H x W x 3`` uint8 RGB is exactly the official input).
        model: a loaded :class:`SamModel`.
        points_per_side: grid points along a side of the image (``n**2`` prompts);
            ignored when ``point_grids`` is given.
        points_per_batch: prompts decoded together.
        pred_iou_thresh: keep masks whose predicted IoU is above this (0: no filter).
        stability_score_thresh: keep masks whose stability score is at least this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box IoU above which a duplicate mask of one crop is dropped.
        crop_n_layers: extra layers of crops (layer ``i`` has ``(2**i)**2`` crops).
        crop_nms_thresh: box IoU for duplicates between crops (smaller crops win).
        crop_overlap_ratio: overlap of first-layer crops, fraction of the short side.
        crop_n_points_downscale_factor: points per side in layer ``i`` are divided
            by this to the power ``i``.
        point_grids: explicit ``N x 2`` grids in [0, 1] (x, y), one per layer.
        min_mask_region_area: fill holes and remove islands smaller than this
            (pixels), then suppress new duplicates; 0 turns it off.
        polarity: box proposals only: objects ``"bright"``, ``"dark"`` or ``"auto"``
            (decided from the image; see :mod:`napari_sam.automatic.proposals`).
        object_diameter: box proposals only: typical object diameter in pixels
            (0: estimated from the image).
        max_windows: box proposals only: most zoomed encoder windows (0: no limit;
            see :mod:`napari_sam.automatic.windows`).
        strategy: ``"points"`` (this algorithm), ``"boxes"`` (box proposals, see
            :mod:`napari_sam.automatic.box_strategy`; the point-grid and crop
            parameters and ``return_logits`` do not apply there), or ``"auto"``:
            points when the model was trained on point prompts, else boxes.
        progress: ``progress(done, total)`` after every batch of prompts.
        cancel: polled before every batch; returning True raises :class:`Cancelled`.
        precision: encoder precision (``"float32"`` / ``"bfloat16"`` / ``"auto"``, None:
            the configured default). With the point grid, ``auto`` means float32 (the
            encoder is ~10% of the time; see :func:`napari_sam.precision.resolve_precision`).
        channel_axis: axis of ``image`` holding channels (see ``as_rgb``).
        return_logits: add ``"logits"``, a :class:`~napari_sam.automatic.edges.MaskLogits`
            (low-resolution logits and their geometry, 256 KiB a mask), to each
            record, for :func:`~napari_sam.automatic.edges.edge_map`; they are the
            decoder's, before any small-region removal.
        timings: a dict to receive seconds per stage (``embed``, ``decode``,
            ``upsample_filter``, ``nms``, ``small_regions``, ``records``).
        store: an :class:`~napari_sam.store.EmbeddingStore`: the embeddings of the
            image and of its crops are read from it when there, written when computed.
        key: the key of ``image`` when it is a plane of a larger image (see
            :func:`~napari_sam.embed.compute_embeddings`; default: from ``image`` itself).
        core: box proposals only: ``(x0, y0, x1, y1)`` of ``image`` whose objects are
            wanted (a tile's core, see :mod:`.tiled`; others may be left out).

    Returns:
        One dict per mask, best first within the order of the official code, with
        ``segmentation`` (``H x W`` bool), ``area`` (int), ``bbox`` (XYWH list),
        ``predicted_iou`` (float), ``point_coords`` (``[[x, y]]``),
        ``stability_score`` (float) and ``crop_box`` (XYWH list).

    Raises:
        Cancelled: when ``cancel()`` returned True.
    """
    from .parameters import check_amg_parameters

    checked = check_amg_parameters(
        points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
        box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
        crop_overlap_ratio=crop_overlap_ratio, crop_n_points_downscale_factor=crop_n_points_downscale_factor,
        min_mask_region_area=min_mask_region_area, polarity=polarity, object_diameter=object_diameter,
        max_windows=max_windows,
        **({} if points_per_side is None and point_grids is not None else {"points_per_side": points_per_side}),
    )  # fmt: skip
    points_per_side = checked.get("points_per_side", points_per_side)
    points_per_batch, crop_n_layers = checked["points_per_batch"], checked["crop_n_layers"]
    crop_n_points_downscale_factor = checked["crop_n_points_downscale_factor"]
    _check_parameters(
        points_per_side, points_per_batch, crop_n_layers, crop_n_points_downscale_factor, point_grids, strategy
    )
    rgb = as_rgb(image, channel_axis=channel_axis)
    strategy = "points" if uses_point_grid(model, strategy) else "boxes"
    if strategy == "boxes":
        from .box_strategy import segment_everything_with_boxes

        return segment_everything_with_boxes(
            rgb,
            model,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            min_mask_region_area=min_mask_region_area,
            polarity=checked["polarity"],
            object_diameter=checked["object_diameter"],
            max_windows=checked["max_windows"],
            progress=progress,
            cancel=cancel,
            precision=precision,
            store=store,
            key=key,
            core=core,
        )

    start = time.perf_counter()
    precision = resolve_precision(precision, model.spec, encoder_bound=False)
    if point_grids is not None:
        grids = [np.asarray(grid, dtype=np.float64).reshape(-1, 2) for grid in point_grids]
    else:
        grids = amg.build_all_layer_point_grids(int(points_per_side), crop_n_layers, crop_n_points_downscale_factor)
    orig_size = (int(rgb.shape[0]), int(rgb.shape[1]))
    crop_boxes, layer_indices = amg.generate_crop_boxes(orig_size, crop_n_layers, crop_overlap_ratio)
    run = _Run(
        model, points_per_batch, pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh,
        precision, return_logits, progress, cancel,
        total=sum(math.ceil(len(grids[layer]) / points_per_batch) for layer in layer_indices),
        timings=timings if timings is not None else {},
    )
    parts: list[MaskRecords] = []
    crop_masks: list[torch.Tensor] = []
    embeddings = compute_embeddings(model, rgb, windows=crop_boxes, store=store, precision=precision, cancel=cancel,
                                    key=key, rgb_ready=True)
    for crop_index, (crop_box, layer) in enumerate(zip(crop_boxes, layer_indices)):
        run.check_cancel()
        part, masks = _process_crop(run, rgb, crop_box, grids[layer], orig_size, next(embeddings))
        part["crop_index"] = torch.full((len(part),), crop_index, dtype=torch.int64)
        parts.append(part)
        crop_masks.append(masks)
    data = MaskRecords.concat(parts)

    if len(crop_boxes) > 1 and len(data):
        # Duplicates between crops: prefer masks from smaller crops.
        scores = 1 / amg.box_area(data["crop_boxes"])
        keep = amg.batched_nms(data["boxes"].float(), scores, torch.zeros(len(data)), crop_nms_thresh)
        data.filter(keep)
    run.lap("nms")

    full_masks = _assemble_masks(data, crop_masks, crop_boxes, orig_size)
    del crop_masks
    run.check_cancel()
    if min_mask_region_area > 0 and len(data):
        full_masks = _postprocess_small_regions(
            data, full_masks, min_mask_region_area, max(box_nms_thresh, crop_nms_thresh)
        )
        run.lap("small_regions")

    records = _to_records(data, full_masks, orig_size)
    run.lap("records")
    run.timings["total"] = time.perf_counter() - start
    return records


def _process_crop(
    run: _Run, rgb: np.ndarray, crop_box: list[int], grid: np.ndarray, orig_size: tuple[int, int],
    embedding: ImageEmbedding,
) -> tuple[MaskRecords, torch.Tensor]:
    """One crop: decode every grid point of its embedding, filter, NMS.

    Returns:
        ``(records, masks)``: records with ``boxes`` (image frame XYXY int64),
        ``iou_preds``, ``stability_score``, ``points`` (image frame float64),
        ``crop_boxes``, ``mask_row`` (row in ``masks``) and, with
        ``return_logits``, ``low_res``; and the bool masks ``M x h x w`` in the
        crop frame that the rows refer to.
    """
    x0, y0, x1, y1 = crop_box
    crop = rgb[y0:y1, x0:x1]
    crop_h, crop_w = crop.shape[:2]
    run.lap("embed")

    points = grid * np.array([[crop_w, crop_h]], dtype=np.float64)
    input_points = torch.from_numpy(to_input_coords(points, embedding))
    per_mask_bytes = 4 * (embedding.image_size**2 + crop_h * crop_w) * 3
    chunk = max(1, _UPSAMPLE_BYTES // per_mask_bytes)

    batches: list[MaskRecords] = []
    mask_batches: list[torch.Tensor] = []
    for batch in amg.batch_slices(len(points), run.points_per_batch):
        run.check_cancel()
        coords = input_points[batch][:, None, :]
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int64)
        # Prompts without a mask above pred_iou_thresh are not upscaled (their masks are dropped below).
        min_iou = run.pred_iou_thresh if run.pred_iou_thresh > 0.0 else None
        low_res, iou_preds = decode_prompts(run.model, embedding, coords, labels, multimask=True, min_iou=min_iou)
        n_out = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou_preds = iou_preds.flatten(0, 1).float()
        point_index = torch.arange(batch.start, batch.stop).repeat_interleave(n_out)
        run.lap("decode")

        if run.pred_iou_thresh > 0.0:
            keep = iou_preds > run.pred_iou_thresh
            low_res, iou_preds, point_index = low_res[keep], iou_preds[keep], point_index[keep]

        columns, masks = _filter_batch(run, low_res, iou_preds, point_index, embedding, crop_box, orig_size, chunk)
        columns["points"] = torch.from_numpy(points)[columns["points"]]
        if not run.return_logits:
            del columns["low_res"]
        batches.append(MaskRecords(**columns))
        mask_batches.append(masks)
        run.lap("upsample_filter")
        run.tick()

    data = MaskRecords.concat(batches)  # every batch has all columns, possibly 0 rows
    masks = torch.cat(mask_batches)
    del mask_batches
    data["mask_row"] = torch.arange(len(data))

    keep = amg.batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data)), run.box_nms_thresh)
    data.filter(keep)
    masks = masks[data["mask_row"]]
    data["mask_row"] = torch.arange(len(data))
    data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
    data["points"] = amg.uncrop_points(data["points"], crop_box)
    data["crop_boxes"] = torch.tensor(crop_box, dtype=torch.int64).repeat(len(data), 1)
    if run.return_logits:
        data["input_size"] = torch.tensor(embedding.input_size).repeat(len(data), 1)
        data["image_size"] = torch.full((len(data),), embedding.image_size)
    run.lap("nms")
    return data, masks


def _filter_batch(
    run: _Run,
    low_res: torch.Tensor,
    iou_preds: torch.Tensor,
    point_index: torch.Tensor,
    embedding: ImageEmbedding,
    crop_box: list[int],
    orig_size: tuple[int, int],
    chunk: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Upsample ``N x 256 x 256`` logits a chunk at a time; keep stable masks away from inner crop edges.

    Returns:
        ``(columns, masks)``: ``boxes`` (crop frame), ``iou_preds``,
        ``stability_score``, ``points`` (indices into the crop's grid), ``low_res``
        of the kept masks, and the kept bool masks ``M x h x w`` (crop frame).
    """
    kept_masks, kept_stability, kept_rows = [], [], []
    for start in range(0, low_res.shape[0], chunk):
        logits = logits_to_image(low_res[start : start + chunk, None], embedding)[:, 0]
        stability = amg.calculate_stability_score(logits, MASK_THRESHOLD, run.stability_score_offset)
        rows = torch.arange(start, start + logits.shape[0])
        if run.stability_score_thresh > 0.0:
            good = stability >= run.stability_score_thresh
            logits, stability, rows = logits[good], stability[good], rows[good]
        kept_masks.append(logits > MASK_THRESHOLD)
        kept_stability.append(stability)
        kept_rows.append(rows)
        del logits
    if kept_masks:
        masks, stability, rows = torch.cat(kept_masks), torch.cat(kept_stability), torch.cat(kept_rows)
    else:
        masks = torch.zeros(0, *embedding.original_size, dtype=torch.bool)
        stability, rows = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    boxes = amg.batched_mask_to_box(masks)
    inside = ~amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
    rows = rows[inside]
    columns = dict(
        boxes=boxes[inside],
        iou_preds=iou_preds[rows],
        stability_score=stability[inside],
        points=point_index[rows],
        low_res=low_res[rows].float(),
    )
    return columns, masks[inside]


def _assemble_masks(
    data: MaskRecords, crop_masks: list[torch.Tensor], crop_boxes: list[list[int]], shape: tuple[int, int]
) -> np.ndarray:
    """The kept masks ``N x H x W`` bool in the image frame (one copy per crop, not per mask)."""
    out = np.zeros((len(data), *shape), dtype=bool)
    if len(data) == 0:
        return out
    crop_index = data["crop_index"].numpy()
    mask_row = data["mask_row"].numpy()
    for index, (x0, y0, x1, y1) in enumerate(crop_boxes):
        selected = np.flatnonzero(crop_index == index)
        if selected.size:
            out[selected, y0:y1, x0:x1] = crop_masks[index][torch.from_numpy(mask_row[selected])].numpy()
    return out


def _postprocess_small_regions(
    data: MaskRecords, masks: np.ndarray, min_area: int, nms_thresh: float
) -> np.ndarray:
    """Fill small holes, remove small islands, then NMS preferring untouched masks.

    Edits ``data`` in place (filter, new boxes) and returns the kept masks.
    """
    n, h, w = masks.shape
    per_chunk = max(1, _LABEL_BYTES // (8 * h * w))
    unchanged = np.ones(n, dtype=bool)
    for start in range(0, n, per_chunk):
        part = slice(start, min(start + per_chunk, n))
        filled, changed_holes = amg.remove_small_regions_batch(masks[part], min_area, "holes")
        cleaned, changed_islands = amg.remove_small_regions_batch(filled, min_area, "islands")
        masks[part] = cleaned
        unchanged[part] = ~(changed_holes | changed_islands)
    boxes = amg.batched_mask_to_box(torch.from_numpy(masks))
    scores = torch.from_numpy(unchanged.astype(np.float32))
    keep = amg.batched_nms(boxes.float(), scores, torch.zeros(n), nms_thresh)
    data["boxes"] = boxes
    data.filter(keep)
    return masks[keep.numpy()]


def _to_records(data: MaskRecords, masks: np.ndarray, shape: tuple[int, int]) -> list[dict]:
    """Official-style record dicts from the columns."""
    if len(data) == 0:
        return []
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1, dtype=np.int64).tolist()
    bboxes = amg.box_xyxy_to_xywh(data["boxes"]).tolist()
    crop_xywh = amg.box_xyxy_to_xywh(data["crop_boxes"]).tolist()
    ious = data["iou_preds"].tolist()
    stabilities = data["stability_score"].tolist()
    points = data["points"].tolist()
    has_logits = "low_res" in data
    records = []
    for i in range(len(data)):
        record = {
            "segmentation": masks[i],
            "area": areas[i],
            "bbox": bboxes[i],
            "predicted_iou": ious[i],
            "point_coords": [points[i]],
            "stability_score": stabilities[i],
            "crop_box": crop_xywh[i],
        }
        if has_logits:
            record["logits"] = MaskLogits(
                low_res=data["low_res"][i].numpy(),
                image_size=int(data["image_size"][i]),
                input_size=tuple(int(v) for v in data["input_size"][i]),
                crop_box=tuple(int(v) for v in data["crop_boxes"][i]),
                image_shape=tuple(shape),
            )
        records.append(record)
    return records
