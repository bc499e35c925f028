"""Image embeddings: the encoder output plus the geometry to map results back.

An embedding is computed once per image plane (and per tile, later) and reused for
every prompt. :class:`EmbeddingCache` keeps recent embeddings keyed by
``(image key, plane, tile, model)`` so returning to a plane is instant; it holds no
global state (each widget or pipeline owns its cache).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageEmbedding:
    """The encoder output for one 2D image.

    Attributes:
        features: ``1 x 256 x 64 x 64`` float32 image embedding.
        original_size: ``(H, W)`` of the image given by the user.
        input_size: ``(h, w)`` of the resized image inside the padded encoder input.
        image_size: side ``S`` of the square encoder input.
        model_name: registry name of the model that computed it.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int
    model_name: str

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: input-frame pixels per original pixel along rows and columns."""
        return (
            self.input_size[0] / self.original_size[0],
            self.input_size[1] / self.original_size[1],
        )

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


def image_key(image: np.ndarray) -> str:
    """A content hash of ``image`` (shape, dtype and bytes) for cache keys."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


class EmbeddingCache:
    """A bounded least-recently-used map from keys to :class:`ImageEmbedding`.

    Keys are any hashable tuple; by convention
    ``(image_key, plane_index, tile_index, model_name)``. Each embedding is
    1 x 256 x 64 x 64 float32 (4 MiB); the default bound keeps 64 of them.
    """

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()

    def get(self, key: Hashable) -> ImageEmbedding | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, embedding: ImageEmbedding) -> None:
        self._items[key] = embedding
        self._items.move_to_end(key)
        while len(self._items) > 1 and sum(e.nbytes for e in self._items.values()) > self.max_bytes:
            self._items.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
