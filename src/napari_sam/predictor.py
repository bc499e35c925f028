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
from .embedding import EmbeddingCache, EmbeddingKey, ImageEmbedding
from .errors import PromptError
from .inference import (
    decode_boxes_in_window,
    decode_prompts,
    logits_to_image,
    sample_logits,
    to_input_coords,
)
from .models.sam import SamModel
from .prompt_checks import check_boxes, check_mask_input, check_points
from .source import PlaneSource
from .tiles import TILE_PROMPTS_ABOVE, TileGrid

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


#: Bytes of full-size masks :meth:`Predictor.predict` makes at most (beyond: :meth:`Predictor.predict_regions`).
FULL_MASK_BYTES = 2**30


class RegionPrediction(NamedTuple):
    """The masks of one object on a region of the image: how large images are answered.

    Attributes:
        masks: ``C x h x w`` bool masks over ``region``.
        iou_scores: ``C`` predicted IoU (or, for clicks on a box-only model, the search's scores).
        low_res_logits: ``C x 256 x 256`` logits to feed back as ``mask_input``.
        region: ``(x0, y0, x1, y1)`` pixels of the image the masks cover (ends exclusive);
            every mask pixel outside it is False.
    """

    masks: np.ndarray
    iou_scores: np.ndarray
    low_res_logits: np.ndarray
    region: tuple[int, int, int, int]

    def expanded(self, shape: tuple[int, int]) -> RegionPrediction:
        """The same prediction on the whole ``(H, W)`` image (masks ``C x H x W``)."""
        x0, y0, x1, y1 = self.region
        if (x0, y0, x1, y1) == (0, 0, shape[1], shape[0]):
            return self
        out = np.zeros((self.masks.shape[0], *shape), dtype=bool)
        out[:, y0:y1, x0:x1] = self.masks
        return self._replace(masks=out, region=(0, 0, shape[1], shape[0]))


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

    Large images (slides, mosaics: any size, numpy or lazy dask / zarr, see
    :mod:`napari_sam.source`) are never read whole: the whole-image embedding is
    made from a coarse overview, models with a 1,024 px input answer each prompt
    from the tile that holds it (:mod:`napari_sam.tiles`, on planes more than twice
    their input), and :meth:`predict_regions` returns each mask on its region only.

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
        self._source: PlaneSource | None = None  # the plane windows are read from
        self._window_key: EmbeddingKey | None = None  # the key windows are stored under (built once per image)
        self._frames = zooming.LogitFrames()
        #: How much smaller than the image the view of the last answer was, when it came from the
        #: overview of a large image (a prompt no window or tile holds); None otherwise.
        self.last_coarse: float | None = None

    @property
    def spec(self):
        return self.model.spec

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The current image's embedding, or None before :meth:`set_image`."""
        return self._embedding

    @property
    def source(self):
        """The current image as a :class:`~napari_sam.source.PlaneSource` (None before :meth:`set_image`, or
        for an embedding set without its image)."""
        return self._source

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    def set_image(
        self,
        image,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
    ) -> ImageEmbedding:
        """Compute and keep the embedding of a 2D image.

        Args:
            image: ``H x W`` grayscale, ``H x W x 3|4`` RGB(A), or multi-channel with
                ``channel_axis``; any numeric dtype (see :mod:`napari_sam.preprocess`);
                numpy, or for large images dask, zarr, a lazily read TIFF, the levels of a
                pyramid, or a :class:`~napari_sam.source.PlaneSource`.
            channel_axis: axis that holds channels, if not the last one of an RGB image.
            channels: which channels to use (1 to 3).

        Returns:
            The :class:`ImageEmbedding` (also kept on the predictor). For a large image
            (:func:`~napari_sam.source.is_large`) it is made from a coarse overview and
            prompts are answered from windows or tiles read when needed.
        """
        source = PlaneSource.of(image, channel_axis, channels)
        if source.large:
            embedding = embed_one(self.model, source, cache=self.cache, store=self.store, precision=self.precision)
        else:
            rgb = source.rgb()
            embedding = embed_one(self.model, rgb, rgb_ready=True, cache=self.cache, precision=self.precision)
            source = PlaneSource(rgb, rgb_ready=True)
        self._embedding, self._source, self._window_key = embedding, source, None
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
                ``H x W x 3`` output of :func:`~napari_sam.preprocess.as_rgb`; or a
                :class:`~napari_sam.source.PlaneSource`), so that prompts can be
                answered from zoomed windows and tiles; without it, every prompt is
                answered from ``embedding``.
        """
        if embedding.model_name != self.spec.name or embedding.image_size != self.spec.image_size:
            raise PromptError(
                f"This embedding was computed by model {embedding.model_name!r}, not {self.spec.name!r}; "
                "compute it again with set_image."
            )
        same = embedding.key is not None and self._embedding is not None and embedding.key == self._embedding.key
        self._embedding = embedding
        self._source = None if image is None else PlaneSource.of(image, channel_axis, channels, rgb_ready)
        self._window_key = None
        if not same:  # the same plane again: logits shown before are still in their windows
            self._frames.clear()

    def reset_image(self) -> None:
        self._embedding = None
        self._source = self._window_key = None
        self._frames.clear()

    # ------------------------------------------------------------------ zoomed windows

    @property
    def large(self) -> bool:
        """The image is read window by window (:func:`~napari_sam.source.is_large`): answers stay on regions."""
        return self._source is not None and self._source.large

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the current image."""
        return tuple(self._require_embedding().original_size)

    @property
    def tiles(self) -> TileGrid | None:
        """The tiles prompts are answered from (models with a 1,024 px input on planes more than
        :data:`~napari_sam.tiles.TILE_PROMPTS_ABOVE` times it), or None."""
        if self.zoom or self._source is None or self._embedding is None:
            return None
        if max(self._embedding.original_size) <= TILE_PROMPTS_ABOVE * self.spec.image_size:
            return None
        return TileGrid.for_model(self._embedding.original_size, self.spec)

    @property
    def _windowed(self) -> bool:
        """Prompts are answered from windows of the image (zoom or tiles), not only the whole embedding."""
        return self._source is not None and (self.zoom or self.tiles is not None)

    def window_for(self, box) -> Window | None:
        """The window a prompt with bounding ``box`` (x0, y0, x1, y1) is answered from; None: the
        whole image (for a box no tile holds on a large image: its coarse overview)."""
        shape = self._require_embedding().original_size
        if self.zoom and self._source is not None:
            return zooming.prompt_window(box, shape, self.spec.image_size)
        tiles = self.tiles
        if tiles is None:
            return None
        tile = tiles.tile_for(box)
        return None if tile is None else tile.window

    def needs_encoder(self, points=None, labels=None, box=None) -> bool:
        """Whether answering these prompts would run the encoder first: the window (or tile) they are
        answered from has no embedding in memory or in the store yet. The annotator answers such
        prompts in a worker. (Windows chosen later from the mask found are not foreseen.)"""
        if self._embedding is None or not self._windowed:
            return False
        positive = None
        if points is not None:
            coords = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            flags = np.ones(len(coords), bool) if labels is None else np.asarray(labels).reshape(-1) == 1
            positive = coords[flags] if flags.any() else None
        if box is not None:
            window = self.window_for(zooming.union_box(np.asarray(box, dtype=np.float64).reshape(4), positive))
        elif positive is not None:
            window = (zooming.first_view(positive, self._embedding.original_size, self.spec.image_size) if self.zoom
                      else self.window_for(zooming.union_box(positive.min(0), positive)))
        else:
            return False
        inverted = self._inverted_for(None if box is None else np.asarray(box, dtype=np.float64).reshape(-1, 4))
        if window is None and not inverted:
            return False
        base = self._key_base().inverted() if inverted else self._key_base()
        key = base.at(plane=base.plane, window=window)
        if self.cache.get(key) is not None:
            return False
        return inverted or self.store is None or self.store.get(key) is None

    def _key_base(self) -> EmbeddingKey:
        embedding = self._require_embedding()
        if self._window_key is None:  # a hand-made embedding has no key: name the image once
            self._window_key = embedding.key or EmbeddingKey.create(self._source.signature, self.model,
                                                                    self.precision, view=self._source.view)
        return self._window_key

    def _inverted_for(self, boxes: np.ndarray | None) -> bool:
        """Whether prompts with these ``N x 4`` boxes (image pixels) are answered from the inverted image:
        mostly dark objects in a gray image, for a model that asks for it (see :mod:`napari_sam.polarity`)."""
        if boxes is None or not len(boxes) or self._source is None or not self.spec.invert_dark_objects:
            return False
        from .polarity import dark_boxes

        return bool(dark_boxes(self._source, boxes).mean() > 0.5)

    def inverted_embedding(self, window: Window | None) -> ImageEmbedding:
        """The embedding of ``window`` (None: the whole image) of the current image with its gray levels
        inverted (cached in memory, never stored: the store holds the image as it is)."""
        self._require_embedding()
        key = self._key_base().inverted()
        return embed_one(self.model, self._source.inverted(), windows=[window], key=key, cache=self.cache,
                         precision=key.precision)

    def window_embedding(self, window: Window) -> ImageEmbedding:
        """The embedding of an ``(x0, y0, x1, y1)`` window of the current image (cached, stored)."""
        self._require_embedding()
        if self._source is None:
            raise PromptError("This predictor has no image to cut windows from: give image= to set_embedding.")
        key = self._key_base()
        return embed_one(self.model, self._source, windows=[window], key=key, cache=self.cache, store=self.store,
                         precision=key.precision)

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
        and feeding them back as ``mask_input`` decodes in the same window. On a
        large image, models with a 1,024 px input answer from the tile holding the
        prompt (:attr:`tiles`), the same way.

        Returns:
            :class:`Prediction` with masks ``C x H x W`` for a single prompt, or
            ``B x C x H x W`` when ``box`` is ``B x 4`` with ``B > 1`` or 2-D.

        Raises:
            PromptError: prompts that are not numbers, of the wrong shape (points are
                ``N x 2``: a ``2 x N`` array is refused), without labels, outside the
                image, or several boxes with points on a box-only model; full-size
                masks of more than :data:`FULL_MASK_BYTES` (use :meth:`predict_regions`).
        """
        regions = self.predict_regions(points, labels, box, mask_input, multimask)
        shape = self.image_shape
        size = len(regions) * regions[0].masks.shape[0] * shape[0] * shape[1]
        if size > FULL_MASK_BYTES:
            raise PromptError(
                f"Masks of the whole {shape[1]} x {shape[0]} image would take {size / 2**30:.1f} GB: use "
                "predict_regions(), which gives each mask on its region, for images this large."
            )
        full = [r.expanded(shape).masks for r in regions]
        scores = np.stack([r.iou_scores for r in regions])
        logits = np.stack([r.low_res_logits for r in regions])
        if box is not None and np.ndim(box) == 2:
            return Prediction(np.stack(full), scores, logits)
        return Prediction(full[0], scores[0], logits[0])

    def predict_regions(
        self,
        points: np.ndarray | Sequence | None = None,
        labels: np.ndarray | Sequence | None = None,
        box: np.ndarray | Sequence | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
    ) -> list[RegionPrediction]:
        """:meth:`predict`, each object's masks on its region only: for images of any size.

        Takes the same prompts. Returns one :class:`RegionPrediction` per object (one,
        or ``B`` for a ``B x 4`` box array): ``C x h x w`` masks over its ``region``
        (the window or tile that answered it; for the whole image of a large plane, the
        masks' bounding box), with the same scores and low-resolution logits as
        :meth:`predict`.
        """
        embedding = self._require_embedding()
        if points is None and box is None and mask_input is None:
            raise PromptError("Give at least one prompt: points with labels, a box, or a mask_input.")
        self.last_coarse = None
        boxes = None if box is None else check_boxes(box, embedding.original_size)
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
        windowed = self._windowed
        if mask is not None and windowed and not self._mask_window_holds(mask, coords, point_labels, boxes):
            mask = None  # the object outgrew the window its earlier logits are in: start afresh
        prompts = (coords, point_labels, boxes, mask, multimask)
        if not windowed:
            return self._answer(None, *prompts)
        if boxes is None and mask is None:
            return self._answer_clicks(*prompts)
        return self._answer_by_window(*prompts)

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

    def _answer_by_window(self, coords, point_labels, boxes, mask, multimask) -> list[RegionPrediction]:
        """Each object in its window: the window of its box (and clicks), or the one its ``mask`` came from."""
        positive = None if coords is None else coords[point_labels == 1]
        rows = 1 if boxes is None else boxes.shape[0]
        windows = []
        for k in range(rows):
            if mask is not None:
                windows.append(self._frames.window_of(mask[k if mask.shape[0] > 1 else 0, 0]))
            else:
                windows.append(self.window_for(zooming.union_box(boxes[k], positive)))
        out: list = [None] * rows
        for window in dict.fromkeys(windows):
            members = [k for k in range(rows) if windows[k] == window]
            part_boxes = None if boxes is None else boxes[members]
            part_mask = mask if mask is None or mask.shape[0] == 1 else mask[members]
            for k, answer in zip(members, self._answer(window, coords, point_labels, part_boxes, part_mask,
                                                       multimask)):
                out[k] = answer
        return out

    def _answer_clicks(self, coords, point_labels, boxes, mask, multimask) -> list[RegionPrediction]:
        """Clicks alone: answer on a first view, then in the window of the mask found (see :mod:`napari_sam.zoom`)."""
        shape, size = self._embedding.original_size, self.spec.image_size
        positive = coords[point_labels == 1]
        if len(positive) == 0:
            return self._answer(None, coords, point_labels, boxes, mask, multimask)
        if self.zoom:
            window = zooming.first_view(positive, shape, size)
        else:  # tiles: the one holding the clicks
            window = self.window_for(zooming.union_box(positive.min(0), positive))
        if not self.spec.supports_points:
            # The click search of a box-only model is best on the first view: zooming its
            # answers lowered one-click IoU on DSB 2018 nuclei (0.671 -> 0.658, 0.638 with
            # the search itself zoomed) at 15x the time.
            return self._answer(window, coords, point_labels, boxes, mask, multimask)
        answers: dict = {}
        for _ in range(zooming.MAX_PASSES):
            answers[window] = result = self._answer(window, coords, point_labels, boxes, mask, multimask)
            answer = result[0]
            found = zooming.mask_box(answer.masks[int(np.argmax(answer.iou_scores))])
            if found is None:
                break
            x0, y0 = answer.region[:2]
            window = self.window_for(zooming.union_box(found + [x0, y0, x0, y0], positive))
            if window in answers:
                result = answers[window]
                break
        return result

    def _answer(self, window: Window | None, coords, point_labels, boxes, mask, multimask) -> list[RegionPrediction]:
        """The prompts (image coordinates) answered from ``window`` (None: the whole image): one
        :class:`RegionPrediction` per box row (one without boxes)."""
        inverted = self._inverted_for(boxes)
        if window is None:
            embedding = self.inverted_embedding(None) if inverted else self._embedding
            if self.large:
                self.last_coarse = max(embedding.original_size) / max(embedding.input_size)
        else:
            embedding = self.inverted_embedding(window) if inverted else self.window_embedding(window)
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
            low_res, scores = self._predict_clicks(embedding, coords, point_labels, None if boxes is None else boxes[0],
                                                   multimask)
            low_res, scores = low_res[None], scores[None]
        else:
            low_res, scores = self._decode(embedding, coords, point_labels, boxes, mask, multimask)
        logits = low_res.float().cpu().numpy()
        self._frames.remember(logits, window)
        scores = scores.float().cpu().numpy()
        pieces = self._masks(low_res, embedding, window)
        return [RegionPrediction(masks, scores[k], logits[k], region) for k, (masks, region) in enumerate(pieces)]

    def _masks(self, low_res: torch.Tensor, embedding: ImageEmbedding, window: Window | None) -> list:
        """``(C x h x w masks, region)`` of each row of ``B x C x 256 x 256`` logits decoded on ``embedding``
        (the embedding of ``window``, or of the whole image)."""
        h, w = embedding.original_size
        if window is not None or self._source is None or not self._source.large:
            region = window if window is not None else (0, 0, w, h)
            masks = (logits_to_image(low_res, embedding) > 0.0).cpu().numpy()
            return [(masks[k], region) for k in range(masks.shape[0])]
        # The overview of a large image: each object's masks on their bounding box only.
        rows, channels = low_res.shape[:2]
        regions = np.stack([_logit_region(low_res[k], embedding) for k in range(rows)])
        sampled = sample_logits(low_res.reshape(rows * channels, 1, *low_res.shape[-2:]),
                                np.repeat(regions, channels, axis=0), (0, 0, w, h), embedding.input_size,
                                embedding.image_size)
        out = []
        for k in range(rows):
            masks = torch.stack(sampled[k * channels:(k + 1) * channels]) > 0.0
            out.append((masks.numpy(), tuple(int(v) for v in regions[k])))
        return out

    def _decode(self, embedding: ImageEmbedding, coords, point_labels, boxes, mask, multimask):
        """Native prompts on one embedding (coordinates in its image's pixels): ``B x C x 256 x 256``
        low-resolution logits and ``B x C`` predicted IoU."""
        batch = 1 if boxes is None else boxes.shape[0]
        boxes_t = coords_t = labels_t = mask_t = None
        if boxes is not None:
            boxes_t = torch.from_numpy(to_input_coords(boxes.reshape(-1, 2, 2), embedding).reshape(-1, 4)).float()
        if coords is not None:
            coords_t = torch.from_numpy(to_input_coords(coords, embedding)).float()[None].expand(batch, -1, -1)
            labels_t = torch.from_numpy(point_labels)[None].expand(batch, -1)
        if mask is not None:
            mask_t = torch.from_numpy(mask).expand(batch, -1, -1, -1)
        return decode_prompts(self.model, embedding, coords_t, labels_t, boxes_t, mask_t, multimask=multimask)

    def _predict_clicks(
        self, embedding: ImageEmbedding, coords: np.ndarray, point_labels: np.ndarray, box: np.ndarray | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks on a box-only model: the box prompts that explain them (see :mod:`napari_sam.clicks`).

        Two decoder calls on a window of the embedding: the candidate boxes, then the
        bounding boxes of the best distinct masks (a box fitted to the object is what
        the model was trained on). Returns the low-resolution logits ``C x 256 x 256`` of
        up to three masks, small to large, and their click scores ``C`` (the best scores
        highest), or of the best one.
        """
        size = self.spec.image_size
        lowres = LOW_RES_SIDE / size  # low-resolution logit pixels per input pixel
        grid = embedding.features.shape[-1]
        clicks_xy = to_input_coords(coords + 0.5, embedding)  # pixel centres
        positive, negative = clicks_xy[point_labels == 1], clicks_xy[point_labels == 0]
        bound = None if box is None else to_input_coords(box.reshape(2, 2), embedding).reshape(4)
        if bound is not None and len(positive):  # the box bounds the search, but holds every positive click
            bound = np.concatenate([np.minimum(bound[:2], positive.min(0) - 1),
                                    np.maximum(bound[2:], positive.max(0) + 1)])
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
        return logits[chosen], score[chosen]


def _logit_region(low_res: torch.Tensor, embedding: ImageEmbedding) -> np.ndarray:
    """``4`` int (x0, y0, x1, y1) image pixels around where any of ``C x 256 x 256`` logits is
    positive (one low-resolution pixel of margin), for masks of a whole large image."""
    h, w = embedding.original_size
    side = low_res.shape[-1]
    positive = (low_res > 0.0).any(0)
    rows = torch.nonzero(positive.any(1)).flatten()
    cols = torch.nonzero(positive.any(0)).flatten()
    if rows.numel() == 0:
        return np.array([0, 0, 1, 1], dtype=np.int64)
    per_pixel = embedding.image_size / side  # input pixels per low-resolution pixel
    sy, sx = embedding.scale
    x0 = (int(cols[0]) - 1) * per_pixel / sx
    x1 = (int(cols[-1]) + 2) * per_pixel / sx
    y0 = (int(rows[0]) - 1) * per_pixel / sy
    y1 = (int(rows[-1]) + 2) * per_pixel / sy
    box = np.array([np.floor(x0), np.floor(y0), np.ceil(x1), np.ceil(y1)])
    box = np.clip(box, 0, [w, h, w, h]).astype(np.int64)
    box[2:] = np.maximum(box[2:], box[:2] + 1)
    return box
