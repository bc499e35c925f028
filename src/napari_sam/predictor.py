"""Predictor: compute an image embedding once, then segment from prompts in real time."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .embedding import ImageEmbedding
from .errors import PromptError
from .inference import decode_prompts, embed_image, logits_to_image, to_input_coords
from .models.sam import SamModel
from .preprocess import as_rgb

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

    Args:
        model: a :class:`SamModel` (see :func:`napari_sam.load_model`), or a registry
            name or checkpoint path to load.
        precision: encoder precision, ``"float32"`` (exact), ``"bfloat16"`` or
            ``"auto"`` (None: the ``NAPARI_SAMKIT_PRECISION`` environment variable,
            else auto; see :mod:`napari_sam.precision`).
    """

    def __init__(self, model: SamModel | str | os.PathLike = "lite_medsam", precision: str | None = None) -> None:
        if not isinstance(model, SamModel):
            from .loading import load_model

            model = load_model(model)
        self.model = model
        self.precision = precision
        self._embedding: ImageEmbedding | None = None

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
        self._embedding = embed_image(self.model, rgb, precision=self.precision)
        return self._embedding

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use a previously computed embedding (e.g. from an :class:`EmbeddingCache`)."""
        if embedding.model_name != self.spec.name or embedding.image_size != self.spec.image_size:
            raise PromptError(
                f"This embedding was computed by model {embedding.model_name!r}, not {self.spec.name!r}; "
                "compute it again with set_image."
            )
        self._embedding = embedding

    def reset_image(self) -> None:
        self._embedding = None

    # ------------------------------------------------------------------ prompts

    def _require_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise PromptError("No image is set: call set_image(image) before predict().")
        return self._embedding

    def _check_boxes(self, box, embedding: ImageEmbedding) -> np.ndarray:
        boxes = np.asarray(box, dtype=np.float64)
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise PromptError(f"A box is (x0, y0, x1, y1); got an array of shape {np.shape(box)}.")
        if not np.isfinite(boxes).all():
            raise PromptError("Box coordinates must be finite numbers (found NaN or infinity).")
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
        h, w = embedding.original_size
        outside = (boxes[:, 2] < 0) | (boxes[:, 3] < 0) | (boxes[:, 0] > w) | (boxes[:, 1] > h)
        if outside.any():
            first = boxes[np.flatnonzero(outside)[0]].tolist()
            raise PromptError(
                f"{int(outside.sum())} box(es) lie entirely outside the {w} x {h} (width x height) image, "
                f"e.g. {first}. Boxes are (x0, y0, x1, y1) in pixels."
            )
        return boxes

    def _check_points(self, points, labels, embedding: ImageEmbedding) -> tuple[np.ndarray, np.ndarray]:
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) if np.size(points) else None
        if coords is None:
            raise PromptError("points is empty; give at least one (x, y) point or use a box.")
        if labels is None:
            raise PromptError("points need labels: 1 for foreground, 0 for background, one per point.")
        label_array = np.asarray(labels).reshape(-1)
        if label_array.shape[0] != coords.shape[0]:
            raise PromptError(f"Got {coords.shape[0]} points but {label_array.shape[0]} labels; give one label per point.")
        if not np.isin(label_array, (0, 1)).all():
            raise PromptError(f"Point labels must be 1 (foreground) or 0 (background); got {sorted(set(label_array.tolist()))}.")
        if not np.isfinite(coords).all():
            raise PromptError("Point coordinates must be finite numbers (found NaN or infinity).")
        if self.spec.supports_points is False:
            warnings.warn(
                f"Model {self.spec.name!r} was trained on box prompts only; point prompts give poor masks. "
                "Draw a box around the object, or use a SAM model (vit_b, vit_t).",
                stacklevel=3,
            )
        return coords, label_array.astype(np.int64)

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
                None: the model's default (True for SAM, False for LiteMedSAM), and
                three masks for clicks alone on any model trained on clicks.

        Returns:
            :class:`Prediction` with masks ``C x H x W`` for a single prompt, or
            ``B x C x H x W`` when ``box`` is ``B x 4`` with ``B > 1`` or 2-D.
        """
        embedding = self._require_embedding()
        if points is None and box is None and mask_input is None:
            raise PromptError("Give at least one prompt: points with labels, a box, or a mask_input.")
        if multimask is None:
            # Three masks for the ambiguous prompt (clicks alone) on models trained on
            # clicks, as SAM's interactive loop; otherwise the model's own default.
            multimask = self.spec.multimask or (
                self.spec.supports_points and points is not None and box is None and mask_input is None
            )
        batched = box is not None and np.ndim(box) == 2
        boxes_t = coords_t = labels_t = mask_t = None
        batch = 1
        if box is not None:
            boxes = self._check_boxes(box, embedding)
            batch = boxes.shape[0]
            boxes_t = torch.from_numpy(to_input_coords(boxes.reshape(-1, 2, 2), embedding).reshape(-1, 4)).float()
        if points is not None:
            coords, point_labels = self._check_points(points, labels, embedding)
            coords_t = torch.from_numpy(to_input_coords(coords, embedding)).float()[None].expand(batch, -1, -1)
            labels_t = torch.from_numpy(point_labels)[None].expand(batch, -1)
        if mask_input is not None:
            mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32)
            if mask_t.shape[-2:] != (LOW_RES_SIDE, LOW_RES_SIDE):
                raise PromptError(
                    f"mask_input must be 256 x 256 low-resolution logits (from a previous prediction's "
                    f"low_res_logits); got shape {tuple(mask_t.shape)}."
                )
            mask_t = mask_t.reshape(-1, 1, LOW_RES_SIDE, LOW_RES_SIDE)
            if mask_t.shape[0] not in (1, batch):
                raise PromptError(f"Got {mask_t.shape[0]} mask inputs for {batch} prompts.")
            mask_t = mask_t.expand(batch, -1, -1, -1)
        low_res, iou = decode_prompts(
            self.model, embedding, coords_t, labels_t, boxes_t, mask_t, multimask=multimask
        )
        masks = logits_to_image(low_res, embedding) > 0.0
        result = Prediction(masks.cpu().numpy(), iou.float().cpu().numpy(), low_res.float().cpu().numpy())
        if batched:
            return result
        return Prediction(*(array[0] for array in result))
