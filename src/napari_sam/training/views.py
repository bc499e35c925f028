"""What the frozen encoder sees during training: views of each image, embedded once.

Inference shows the model an object in one of two ways, and training shows it both:

* the **whole image** (the annotator's :class:`~napari_sam.predictor.Predictor`);
* a **zoomed window** (:func:`napari_sam.automatic.windows.plan_windows`, used by
  ``segment_boxes``, rough-label refinement and the automatic box strategy), in
  which a small object is about ``S / 4`` pixels at the encoder input.

A :class:`View` is one such window with its embedding (computed once per run with
the encoder frozen) and, for each object it holds, the ground truth in the frame of
the decoder's low-resolution logits (``256 x 256`` covering the padded ``S x S``
input): the loss and the simulated prompts live in that frame.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..embedding import EmbeddingCache, ImageEmbedding
from ..models.sam import SamModel
from ..preprocess import as_rgb
from .data import TrainingImage

#: Side of the decoder's low-resolution logits.
LOW_RES = 256
#: Objects smaller than this (pixels of the low-res frame, longest side) are left out of a view.
MIN_OBJECT_SIDE = 3.0


#: How views keep their embeddings in memory (float32 for the decoder; see :attr:`View.features`).
VIEW_DTYPE = torch.float16


@dataclass
class View:
    """One encoder window of one training image and the objects it holds.

    Attributes:
        source: the :class:`TrainingImage` name.
        window: ``(x0, y0, x1, y1)`` of the image the encoder saw.
        embedding: its :class:`ImageEmbedding` (``1 x 256 x 64 x 64``), its features
            kept as float16 (2 MiB instead of 4: a run holds one per view, and 20 images of
            150 nuclei make 1,500 views); :attr:`features` gives them as float32.
        targets: ``K x 256 x 256`` uint8 masks of the ``K`` objects in the
            low-resolution frame (0 outside ``valid``).
        boxes: ``K x 4`` float32 (x0, y0, x1, y1) boxes in the encoder's input frame.
        valid: ``(h, w)``: rows and columns of the low-res frame that show image
            (the rest is padding, left out of the loss).
        object_ids: ``K`` label ids in the source image.
    """

    source: str
    window: tuple[int, int, int, int]
    embedding: ImageEmbedding
    targets: torch.Tensor
    boxes: torch.Tensor
    valid: tuple[int, int]
    object_ids: np.ndarray

    @property
    def features(self) -> torch.Tensor:
        """The window's image embedding, ``1 x 256 x 64 x 64`` float32, for the decoder."""
        return self.embedding.features.float()

    @property
    def scale(self) -> float:
        """Input-frame pixels per low-res pixel (``S / 256``)."""
        return self.embedding.image_size / LOW_RES

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def valid_mask(self) -> torch.Tensor:
        """``256 x 256`` bool: the low-res pixels that show the image (not padding)."""
        mask = torch.zeros(LOW_RES, LOW_RES, dtype=torch.bool)
        mask[: self.valid[0], : self.valid[1]] = True
        return mask


def object_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, boxes)``: the ids of ``labels`` and their ``N x 4`` XYXY boxes (ends exclusive)."""
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids != 0]
    slices = ndimage.find_objects(labels.astype(np.int64, copy=False))
    boxes = []
    for i in ids:
        rows, cols = slices[int(i) - 1]
        boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return ids, np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _targets(labels: np.ndarray, ids: np.ndarray, window, embedding: ImageEmbedding) -> tuple[torch.Tensor, tuple]:
    """Ground-truth masks of ``ids`` inside ``window`` -> ``K x 256 x 256`` uint8 in the low-res frame."""
    x0, y0, x1, y1 = window
    crop = labels[y0:y1, x0:x1]
    h, w = embedding.input_size
    factor = LOW_RES / embedding.image_size
    valid = (max(1, int(round(h * factor))), max(1, int(round(w * factor))))
    out = torch.zeros(len(ids), LOW_RES, LOW_RES, dtype=torch.uint8)
    for start in range(0, len(ids), 64):
        part = ids[start : start + 64]
        masks = torch.from_numpy(crop[None] == part[:, None, None]).float()[:, None]
        small = F.interpolate(masks, valid, mode="area")[:, 0] > 0.5
        out[start : start + len(part), : valid[0], : valid[1]] = small.to(torch.uint8)
    return out, valid


def build_views(
    model: SamModel,
    items: Sequence[TrainingImage],
    *,
    whole_image: bool = True,
    zoom: bool = True,
    precision: str | None = None,
    cache: EmbeddingCache | None = None,
    store_folder: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[View]:
    """Embed every view of every training image (the encoder runs once per view).

    Args:
        model: the model being trained (its encoder is only run, never trained).
        items: annotated planes.
        whole_image: add the whole image as a view of all its objects.
        zoom: add the zoomed windows that ``segment_boxes`` would use.
        precision: encoder precision (None: the configured default).
        cache: an :class:`EmbeddingCache` reused across calls (and runs, if kept),
            keyed as every embedding (:func:`napari_sam.embed.compute_embeddings`).
        store_folder: a folder of embedding stores, one per image (see
            :func:`napari_sam.store.store_in_folder`): views are read from it and
            written to it as computed, so a resumed run or the next round of the data
            engine on the same images does not run the encoder again.
        progress: ``progress(done, total)`` in images.
        cancel: polled before each image; True stops with :class:`Cancelled`.

    Returns:
        Views with at least one object each.
    """
    from ..automatic.amg import Cancelled
    from ..automatic.windows import plan_windows
    from ..embed import compute_embeddings
    from ..precision import resolve_precision
    from ..store import open_in_folder

    precision = resolve_precision(precision, model.spec)
    size = model.spec.image_size
    views: list[View] = []
    for done, item in enumerate(items):
        if cancel is not None and cancel():
            raise Cancelled()
        rgb = as_rgb(item.image)
        labels = np.asarray(item.labels)
        h, w = labels.shape
        ids, boxes = object_boxes(labels)
        plan: list[tuple[tuple[int, int, int, int], np.ndarray]] = []
        if whole_image:
            plan.append(((0, 0, w, h), np.arange(len(ids))))
        if zoom:
            windows, owner = plan_windows(boxes, (h, w), size)
            for index, window in enumerate(windows):
                if window == (0, 0, w, h) and whole_image:
                    continue
                members = np.flatnonzero(owner == index)
                if members.size:
                    plan.append((tuple(int(v) for v in window), members))
        store = key = None
        if store_folder is not None:
            store, key = open_in_folder(store_folder, rgb, model, precision, item.name, cache=cache)
        embeddings = compute_embeddings(model, rgb, windows=[window for window, _ in plan], cache=cache,
                                        store=store, key=key, precision=precision, rgb_ready=True)
        for (window, members), embedding in zip(plan, embeddings):
            x0, y0, x1, y1 = window
            sy, sx = embedding.scale
            local = boxes[members] - np.array([x0, y0, x0, y0], dtype=np.float64)
            local = np.clip(local, 0, [x1 - x0, y1 - y0, x1 - x0, y1 - y0]) * np.array([sx, sy, sx, sy])
            side = np.maximum(local[:, 2] - local[:, 0], local[:, 3] - local[:, 1]) * LOW_RES / size
            keep = members[side >= MIN_OBJECT_SIDE]
            local = local[side >= MIN_OBJECT_SIDE]
            if keep.size == 0:
                continue
            targets, valid = _targets(labels, ids[keep], window, embedding)
            present = targets.flatten(1).amax(1).numpy() > 0
            if not present.any():
                continue
            views.append(View(
                source=item.name,
                window=window,
                embedding=replace(embedding, features=embedding.features.to(VIEW_DTYPE)),
                targets=targets[torch.from_numpy(present)],
                boxes=torch.from_numpy(local[present]).float(),
                valid=valid,
                object_ids=ids[keep][present],
            ))  # fmt: skip
        if progress is not None:
            progress(done + 1, len(items))
    return views
