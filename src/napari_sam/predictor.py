"""Predictor: compute an image embedding once, then segment from prompts in real time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from . import clicks
from . import zoom as zooming
from .embed import Window, embed_one
from .embedding import EmbeddingCache, EmbeddingKey, ImageEmbedding, image_signature
from .errors import PromptError
from .inference import (
    decode_boxes_in_window,
    decode_prompts,
    logits_to_image,
    to_input_coords,
)
from .models.sam import SamModel
from .preprocess import as_rgb
from .prompt_checks import check_boxes, check_mask_input, check_points


#: Side of the low-resolution logits the decoder returns (and accepts as mask_input).
LOW_RES_SIDE = 256


class Prediction(NamedTuple):
    """Masks for one prompt (``C x ...``) or a batch of box prompts (``B x C x ...``).

    Attributes:
        masks: bool masks at the original resolution, ``C x H x W`` (``B x C x H x W``).
        iou_scores: the model's predicted IoU of each mask, ``C`` (``B x C``).
        low_res_logits: ``C x 256 x 256`` (``B x C x 256 x 256``) logits; pass one of
            them back as ``mask_input`` to refine the same object.
    """

    masks: np.ndarray
    iou_scores: np.ndarray
    low_res_logits: np.ndarray


class Predictor:
    """Promptable segmentation of one image at a time.

    >>> predictor = Predictor(load_model("lite_medsam"))
    >>> predictor.set_image(image)                       # runs the encoder once
    >>> masks, scores, logits = predictor.predict(box=[x0, y0, x1, y1])

    Coordinates are (x, y) pixels of the original image, as in Meta's
    ``SamPredictor``. Holds no global state: make one per model and image stream.

    Models with a small encoder input (LiteMedSAM) answer prompts on small objects
    from a zoomed window of the image (:mod:`napari_sam.zoom`): the masks are still
    ``H x W`` of the whole image; window embeddings are computed on first use
    (one encoder run each) and kept in :attr:`cache` (and :attr:`store`, if set).

    Args:
        model: a :class:`SamModel` (see :func:`napari_sam.load_model`), or a registry
            name or checkpoint path to load.
        precision: encoder precision, ``"float32"`` (exact), ``"bfloat16"`` or
            ``"auto"`` (None: the ``NAPARI_SAMKIT_PRECISION`` environment variable,
            else auto; see :mod:`napari_sam.precision`).
        zoom: answer prompts on small objects from zoomed windows (None: the model's
            default, :attr:`~napari_sam.registry.ModelSpec.zooms_prompts`).
        cache: the memory cache of embeddings (default: a new one).

    Attributes:
        store: an :class:`~napari_sam.store.EmbeddingStore` of the current image, or
            None: window embeddings are read from it and written to it.
    """

    def __init__(
        self,
        model: SamModel | str | os.PathLike = "lite_medsam",
        precision: str | None = None,
        zoom: bool | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        if not isinstance(model, SamModel):
            from .loading import load_model

            model = load_model(model)
        self.model = model
        self.precision = precision
        self.zoom = model.spec.zooms_prompts if zoom is None else bool(zoom)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.store = None
        self._embedding: ImageEmbedding | None = None
        self._source: tuple | None = None  # (plane, channel_axis, channels) windows are cut from
        self._rgb: np.ndarray | None = None
        self._window_key: EmbeddingKey | None = None  # the key windows are stored under (built once per image)
        self._frames = zooming.LogitFrames()

    @property
    def spec(self):
        return self.model.spec

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The current image's embedding, or None before :meth:`set_image`."""
        return self._embedding

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    def set_image(
        self,
        image: np.ndarray,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
    ) -> ImageEmbedding:
        """Compute and keep the embedding of a 2D image.

        Args:
            image: ``H x W`` grayscale, ``H x W x 3|4`` RGB(A), or multi-channel with
                ``channel_axis``; any numeric dtype (see :mod:`napari_sam.preprocess`).
            channel_axis: axis that holds channels, if not the last one of an RGB image.
            channels: which channels to use (1 to 3).

        Returns:
            The :class:`ImageEmbedding` (also kept on the predictor).
        """
        rgb = as_rgb(image, channel_axis=channel_axis, channels=channels)
        self._embedding = embed_one(self.model, rgb, rgb_ready=True, cache=self.cache, precision=self.precision)
        self._rgb, self._source, self._window_key = rgb, None, None
        self._frames.clear()
        return self._embedding

    def set_embedding(
        self,
        embedding: ImageEmbedding,
        image: np.ndarray | None = None,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        rgb_ready: bool = False,
    ) -> None:
        """Use a previously computed embedding (e.g. from an :class:`EmbeddingCache`).

        Args:
            embedding: the whole image's embedding.
            image: the 2D image it was computed from (as :meth:`set_image` takes it,
                with ``channel_axis`` and ``channels``; or, with ``rgb_ready``, the
                ``H x W x 3`` output of :func:`~napari_sam.preprocess.as_rgb`), so that
                prompts on small objects can be answered from zoomed windows; without
                it, every prompt is answered from ``embedding``.
        """
        if embedding.model_name != self.spec.name or embedding.image_size != self.spec.image_size:
            raise PromptError(
                f"This embedding was computed by model {embedding.model_name!r}, not {self.spec.name!r}; "
                "compute it again with set_image."
            )
        same = embedding.key is not None and self._embedding is not None and embedding.key == self._embedding.key
        self._embedding = embedding
        self._rgb = image if rgb_ready else None
        self._source = None if image is None or rgb_ready else (image, channel_axis, channels)
        self._window_key = None
        if not same:  # the same plane again: logits shown before are still in their windows
            self._frames.clear()

    def reset_image(self) -> None:
        self._embedding = None
        self._rgb = self._source = self._window_key = None
        self._frames.clear()

    # ------------------------------------------------------------------ zoomed windows

    @property
    def _zooms(self) -> bool:
        return self.zoom and (self._rgb is not None or self._source is not None)

    def window_embedding(self, window: Window) -> ImageEmbedding:
        """The embedding of an ``(x0, y0, x1, y1)`` window of the current image (cached, stored)."""
        embedding = self._require_embedding()
        if self._rgb is None:
            if self._source is None:
                raise PromptError("This predictor has no image to cut windows from: give image= to set_embedding.")
            image, channel_axis, channels = self._source
            self._rgb = as_rgb(np.asarray(image), channel_axis=channel_axis, channels=channels)
        if self._window_key is None:  # a hand-made embedding has no key: hash the image once
            self._window_key = embedding.key or EmbeddingKey.create(image_signature(self._rgb), self.model,
                                                                    self.precision)
        key = self._window_key
        return embed_one(self.model, self._rgb, windows=[window], key=key, cache=self.cache, store=self.store,
                         precision=key.precision, rgb_ready=True)

    # ------------------------------------------------------------------ prompts

    def _require_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise PromptError("No image is set: call set_image(image) before predict().")
        return self._embedding

    def predict(
        self,
        points: np.ndarray | Sequence | None = None,
        labels: np.ndarray | Sequence | None = None,
        box: np.ndarray | Sequence | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
    ) -> Prediction:
        """Segment the current image from prompts.

        Args:
            points: ``N x 2`` (x, y) pixel coordinates, or None.
            labels: ``N`` labels, 1 foreground / 0 background.
            box: ``4`` (x0, y0, x1, y1), or ``B x 4`` for a batch of boxes (each box
                one object; points, if any, are shared by all boxes).
            mask_input: low-resolution logits ``256 x 256``, ``1 x 256 x 256`` or
                ``B x 1 x 256 x 256`` from a previous prediction.
            multimask: three masks (whole, part, subpart) if True, one if False;
                None: the model's default (True for SAM, False for LiteMedSAM),
                three masks for one click alone (the ambiguous prompt) on any model
                trained on clicks, and for clicks on a box-only model (below) up to
                three.

        Points on a model not trained on them (``ModelSpec.supports_points`` False,
        LiteMedSAM) become box prompts: a search over candidate boxes around the
        positive points, bounded by ``box`` if given (:mod:`napari_sam.clicks`). It
        returns up to three distinct masks, small to large, and as ``iou_scores``
        their search scores (the model's predicted IoU times stability, box fit and
        agreement with the clicks), highest for the best. Boxes are clipped to the
        image.

        With :attr:`zoom` (LiteMedSAM's default), a prompt on an object that would be
        small at the encoder input is answered from a zoomed window of the image
        (:mod:`napari_sam.zoom`); ``low_res_logits`` are then in that window's frame,
        and feeding them back as ``mask_input`` decodes in the same window.

        Returns:
            :class:`Prediction` with masks ``C x H x W`` for a single prompt, or
            ``B x C x H x W`` when ``box`` is ``B x 4`` with ``B > 1`` or 2-D.

        Raises:
            PromptError: prompts that are not numbers, of the wrong shape (points are
                ``N x 2``: a ``2 x N`` array is refused), without labels, outside the
                image, or several boxes with points on a box-only model.
        """
        embedding = self._require_embedding()
        if points is None and box is None and mask_input is None:
            raise PromptError("Give at least one prompt: points with labels, a box, or a mask_input.")
        boxes = None if box is None else check_boxes(box, embedding.original_size)
        batched = boxes is not None and np.ndim(box) == 2
        batch = 1 if boxes is None else boxes.shape[0]
        coords = point_labels = None
        if points is not None:
            coords, point_labels = check_points(points, labels)
        mask = None if mask_input is None else check_mask_input(mask_input, LOW_RES_SIDE, batch)
        if coords is not None and not self.spec.supports_points:
            if batch > 1:
                raise PromptError(
                    f"{self.spec.name} turns clicks into box prompts one object at a time: give one box with "
                    "the points (or call predict once per box)."
                )
            if mask is not None:
                raise PromptError(f"{self.spec.name} was not trained on mask prompts; drop mask_input with points.")
        if coords is not None and not self.spec.supports_points:
            multimask = multimask is not False  # the click search: up to three sizes unless asked for one
        elif multimask is None:
            # Three masks for the ambiguous prompt (one click alone) on models trained
            # on clicks; with more prompts the paper's fourth output token (one mask),
            # which is the one trained on correction clicks; else the model's default.
            multimask = self.spec.multimask or (
                self.spec.supports_points and coords is not None and len(coords) == 1 and box is None and mask is None
            )
        if mask is not None and self._zooms and not self._mask_window_holds(mask, coords, point_labels, boxes):
            mask = None  # the object outgrew the window its earlier logits are in: start afresh
        prompts = (coords, point_labels, boxes, mask, multimask)
        if not self._zooms:
            result = self._answer(None, *prompts)
        elif boxes is None and mask is None:
            result = self._answer_clicks(*prompts)
        else:
            result = self._answer_by_window(*prompts)
        return result if batched else Prediction(*(array[0] for array in result))

    def _mask_window_holds(self, mask, coords, point_labels, boxes) -> bool:
        """Whether the window of each fed-back logit map holds its object's positive clicks and box."""
        for k in range(mask.shape[0]):
            window = self._frames.window_of(mask[k, 0])
            if window is None:
                continue
            x0, y0, x1, y1 = window
            if coords is not None:
                positive = coords[point_labels == 1]
                if ((positive < [x0, y0]) | (positive >= [x1, y1])).any():
                    return False
            if boxes is not None:
                b = boxes[k if boxes.shape[0] > 1 else 0]
                if b[0] < x0 or b[1] < y0 or b[2] > x1 or b[3] > y1:
                    return False
        return True

    def _answer_by_window(self, coords, point_labels, boxes, mask, multimask) -> Prediction:
        """Each object in its window: the window of its box (and clicks), or the one its ``mask`` came from."""
        shape, size = self._embedding.original_size, self.spec.image_size
        positive = None if coords is None else coords[point_labels == 1]
        rows = 1 if boxes is None else boxes.shape[0]
        windows = []
        for k in range(rows):
            if mask is not None:
                windows.append(self._frames.window_of(mask[k if mask.shape[0] > 1 else 0, 0]))
            else:
                windows.append(zooming.prompt_window(zooming.union_box(boxes[k], positive), shape, size))
        if len(set(windows)) == 1:
            return self._answer(windows[0], coords, point_labels, boxes, mask, multimask)
        parts = {}
        for window in dict.fromkeys(windows):
            members = np.array([k for k in range(rows) if windows[k] == window])
            part_mask = mask if mask is None or mask.shape[0] == 1 else mask[members]
            parts[window] = (members, self._answer(window, coords, point_labels, boxes[members], part_mask, multimask))
        first = next(iter(parts.values()))[1]
        out = [np.zeros((rows, *array.shape[1:]), dtype=array.dtype) for array in first]
        for members, part in parts.values():
            for whole, array in zip(out, part):
                whole[members] = array
        return Prediction(*out)

    def _answer_clicks(self, coords, point_labels, boxes, mask, multimask) -> Prediction:
        """Clicks alone: answer on a first view, then in the window of the mask found (see :mod:`napari_sam.zoom`)."""
        shape, size = self._embedding.original_size, self.spec.image_size
        positive = coords[point_labels == 1]
        if len(positive) == 0:
            return self._answer(None, coords, point_labels, boxes, mask, multimask)
        window = zooming.first_view(positive, shape, size)
        if not self.spec.supports_points:
            # The click search of a box-only model is best on the first view: zooming its
            # answers lowered one-click IoU on DSB 2018 nuclei (0.671 -> 0.658, 0.638 with
            # the search itself zoomed) at 15x the time.
            return self._answer(window, coords, point_labels, boxes, mask, multimask)
        answers: dict = {}
        for _ in range(zooming.MAX_PASSES):
            answers[window] = result = self._answer(window, coords, point_labels, boxes, mask, multimask)
            found = zooming.mask_box(result.masks[0, int(np.argmax(result.iou_scores[0]))])
            if found is None:
                break
            window = zooming.prompt_window(zooming.union_box(found, positive), shape, size)
            if window in answers:
                result = answers[window]
                break
        return result

    def _answer(self, window: Window | None, coords, point_labels, boxes, mask, multimask) -> Prediction:
        """The prompts (image coordinates) answered from ``window`` (None: the whole image).

        Returns a :class:`Prediction` of ``B x C`` masks of the whole image.
        """
        if window is None:
            embedding = self._embedding
        else:
            embedding = self.window_embedding(window)
            x0, y0, x1, y1 = window
            origin = np.array([x0, y0], dtype=np.float64)
            if coords is not None:
                inside = point_labels == 1
                inside |= ((coords >= origin) & (coords < [x1, y1])).all(1)  # far negative clicks say nothing here
                coords, point_labels = coords[inside] - origin, point_labels[inside]
                if len(coords) == 0:
                    coords = point_labels = None
            if boxes is not None:
                boxes = np.clip(boxes - np.tile(origin, 2), 0, [x1 - x0, y1 - y0] * 2)
        if coords is not None and not self.spec.supports_points:
            result = self._predict_clicks(embedding, coords, point_labels, None if boxes is None else boxes[0],
                                          multimask)
            result = Prediction(*(array[None] for array in result))
        else:
            result = self._decode(embedding, coords, point_labels, boxes, mask, multimask)
        self._frames.remember(result.low_res_logits, window)
        if window is None:
            return result
        h, w = self._embedding.original_size
        masks = np.zeros((*result.masks.shape[:2], h, w), dtype=bool)
        masks[..., y0:y1, x0:x1] = result.masks
        return result._replace(masks=masks)

    def _decode(self, embedding: ImageEmbedding, coords, point_labels, boxes, mask, multimask) -> Prediction:
        """Native prompts on one embedding (coordinates in its image's pixels): ``B x C`` masks of that image."""
        batch = 1 if boxes is None else boxes.shape[0]
        boxes_t = coords_t = labels_t = mask_t = None
        if boxes is not None:
            boxes_t = torch.from_numpy(to_input_coords(boxes.reshape(-1, 2, 2), embedding).reshape(-1, 4)).float()
        if coords is not None:
            coords_t = torch.from_numpy(to_input_coords(coords, embedding)).float()[None].expand(batch, -1, -1)
            labels_t = torch.from_numpy(point_labels)[None].expand(batch, -1)
        if mask is not None:
            mask_t = torch.from_numpy(mask).expand(batch, -1, -1, -1)
        low_res, iou = decode_prompts(
            self.model, embedding, coords_t, labels_t, boxes_t, mask_t, multimask=multimask
        )
        masks = logits_to_image(low_res, embedding) > 0.0
        return Prediction(masks.cpu().numpy(), iou.float().cpu().numpy(), low_res.float().cpu().numpy())

    def _predict_clicks(
        self, embedding: ImageEmbedding, coords: np.ndarray, point_labels: np.ndarray, box: np.ndarray | None,
        multimask: bool,
    ) -> Prediction:
        """Clicks on a box-only model: the box prompts that explain them (see :mod:`napari_sam.clicks`).

        Two decoder calls on a window of the embedding: the candidate boxes, then the
        bounding boxes of the best distinct masks (a box fitted to the object is what
        the model was trained on). Returns up to three masks, small to large, with
        their click scores as ``iou_scores`` (the best scores highest), or the best one.
        """
        size = self.spec.image_size
        lowres = LOW_RES_SIDE / size  # low-resolution logit pixels per input pixel
        grid = embedding.features.shape[-1]
        clicks_xy = to_input_coords(coords + 0.5, embedding)  # pixel centres
        positive, negative = clicks_xy[point_labels == 1], clicks_xy[point_labels == 0]
        bound = None if box is None else to_input_coords(box.reshape(2, 2), embedding).reshape(4)
        if bound is not None and len(positive):  # the box bounds the search, but holds every positive click
            bound = np.concatenate([np.minimum(bound[:2], positive.min(0) - 1), np.maximum(bound[2:], positive.max(0) + 1)])
        h, w = embedding.input_size
        limit = np.array([0.0, 0.0, w, h]) if bound is None else bound

        def decode(candidates: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # a few calls, each on the window its boxes need (the cost grows with the window's tokens)
            tensor = torch.from_numpy(candidates).float()
            logits = torch.empty(len(candidates), LOW_RES_SIDE, LOW_RES_SIDE)
            iou = torch.empty(len(candidates))
            for rows, window in clicks.window_groups(candidates, size, grid):
                part, part_iou = decode_boxes_in_window(self.model, embedding, tensor[rows], window.rows, window.cols)
                logits[rows], iou[rows] = part[:, 0], part_iou[:, 0]
            return logits, iou, tensor * lowres

        candidates = clicks.candidate_boxes(positive, negative, embedding.input_size, size, bound)
        logits, iou, boxes_lr = decode(candidates)
        scores = clicks.score_candidates(logits, iou, boxes_lr, positive * lowres, negative * lowres)
        top = clicks.distinct_answers(logits, scores.score, k=clicks.REFINE_TOP, min_relative=0.0)
        refined = clicks.refinement_boxes(logits, torch.tensor(top), clicks.REFINE_MARGIN * size / 256 * lowres)
        refined = refined.numpy().astype(np.float64) / lowres
        refined = np.concatenate([np.maximum(refined[:, :2], limit[:2]), np.minimum(refined[:, 2:], limit[2:])], 1)
        refined = refined[((refined[:, 2:] - refined[:, :2]) >= 1.0).all(1)]
        if len(refined):
            more, more_iou, more_boxes = decode(refined)
            more_scores = clicks.score_candidates(more, more_iou, more_boxes, positive * lowres, negative * lowres)
            logits = torch.cat([logits, more])
            score = torch.cat([scores.score, more_scores.score])
        else:
            score = scores.score
        chosen = clicks.distinct_answers(logits, score, k=3 if multimask else 1)
        chosen.sort(key=lambda i: int((logits[i] > 0).sum()))  # small / medium / large
        low_res = logits[chosen][:, None]
        masks = logits_to_image(low_res, embedding)[:, 0] > 0.0
        return Prediction(masks.cpu().numpy(), score[chosen].float().cpu().numpy(), low_res[:, 0].float().cpu().numpy())
