"""SAM's interactive loop: predict every object on a plane, refine with earlier logits.

Used by the napari annotator after each change of the prompts; plain numpy around a
:class:`~napari_sam.predictor.Predictor`, no GUI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .annotation import ObjectPrompt


class RefinementMemory:
    """Low-resolution logits of each object's last mask, fed back as ``mask_input``.

    As in SAM's interactive loop: when a person adds points to an object (same box,
    the earlier points unchanged), the previous logits refine the new prediction.
    Any other change (new or moved box, deleted point) starts afresh.
    """

    def __init__(self) -> None:
        self._items: dict[tuple | None, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _key(obj: ObjectPrompt) -> tuple | None:
        return None if obj.box is None else tuple(np.round(obj.box, 3).tolist())

    def mask_input(self, obj: ObjectPrompt) -> np.ndarray | None:
        """The ``256 x 256`` logits to feed back for ``obj``, or None."""
        item = self._items.get(self._key(obj))
        if item is None:
            return None
        points, labels, logits = item
        n = len(points)
        if len(obj.points) <= n:
            return None
        if not (np.array_equal(obj.points[:n], points) and np.array_equal(obj.labels[:n], labels)):
            return None
        return logits

    def remember(self, obj: ObjectPrompt, logits: np.ndarray) -> None:
        """Keep ``logits`` (``256 x 256``) of the mask shown for ``obj``."""
        self._items[self._key(obj)] = (obj.points.copy(), obj.labels.copy(), np.asarray(logits))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def predict_objects(predictor, objects: Sequence[ObjectPrompt], memory: RefinementMemory | None = None) -> list:
    """Run a :class:`~napari_sam.predictor.Predictor` (image already set) on every object.

    Objects with a box and nothing else go through the decoder in one batch; an
    object with points gets its own call, with the previous logits from ``memory``
    as ``mask_input`` when the person added points to it (then one mask, as SAM's
    interactive loop; otherwise the model's default, three masks for SAM). Models
    not trained on mask prompts (LiteMedSAM: the fed-back logits lower its IoU on
    coins from 0.95 to 0.90) never get them.

    Returns:
        One :class:`~napari_sam.predictor.RegionPrediction` per object, in order
        (masks ``C x h x w`` over its ``region``, iou_scores ``C``, low_res_logits
        ``C x 256 x 256``): the whole plane (``C x H x W``) unless the image is large
        (:attr:`~napari_sam.predictor.Predictor.large`), where each stays on its region.
    """
    results: list = [None] * len(objects)
    if memory is None or "masks" not in predictor.spec.prompt_types:
        feedback = [None] * len(objects)
    else:
        feedback = [memory.mask_input(o) for o in objects]
    box_only = [i for i, o in enumerate(objects) if o.box is not None and not o.has_points and feedback[i] is None]
    if box_only:
        batch = predictor.predict_regions(box=np.stack([objects[i].box for i in box_only]))
        for row, i in enumerate(box_only):
            results[i] = batch[row]
    for i, obj in enumerate(objects):
        if results[i] is not None:
            continue
        points = obj.points if obj.has_points else None
        labels = obj.labels if obj.has_points else None
        results[i] = predictor.predict_regions(
            points=points,
            labels=labels,
            box=obj.box,
            mask_input=feedback[i],
            multimask=False if feedback[i] is not None else None,
        )[0]
    if predictor.large:
        return results
    shape = predictor.image_shape
    return [r.expanded(shape) for r in results]


def needs_encoder(predictor, objects: Sequence[ObjectPrompt]) -> bool:
    """Whether previewing ``objects`` would run the image encoder first (a window not embedded yet)."""
    return any(predictor.needs_encoder(o.points if o.has_points else None, o.labels if o.has_points else None, o.box)
               for o in objects)
