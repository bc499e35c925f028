"""Embeddings on disk: one zarr store (a folder) per image, one entry per plane or window.

Layout of a store (zarr v3, no compression: embeddings barely compress and are
read far more often than written)::

    store.zarr/                  group; attributes["napari_samkit_embeddings"] =
                                 {format, image, model, precision, version}
      image                      a 2D image's embedding: float32 1 x 256 x 64 x 64
      plane-3                    plane 3 of a stack
      plane-3_window-0-0-512-512 a window (tile) of plane 3, (x0, y0, x1, y1) pixels

Each entry carries the geometry (``original_size``, ``input_size``,
``image_size``, ``window``, ``plane``, ``model_name``, ``view``), a checksum of its
bytes and ``complete``: an entry is created with ``complete = False``, its bytes are
written, and only then is it marked complete with its checksum. An entry that is
not complete (a run killed while writing), whose metadata does not parse or whose
bytes do not match the checksum is treated as missing and computed again; it never
reads as valid. Entries are written as soon as they are computed, so a cancelled or
crashed run resumes where it stopped.

A store is bound to one image signature, model identity, precision and
napari-samkit version (:attr:`EmbeddingKey.store_attributes`): opening it for
anything else raises :class:`~napari_sam.errors.StoreMismatchError`, which says what
differs; give a new folder, or ``overwrite=True`` to start the store afresh. A
bounded in-memory :class:`~napari_sam.embedding.EmbeddingCache` sits on top.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .embedding import EmbeddingCache, EmbeddingKey, ImageEmbedding
from .errors import StoreError, StoreMismatchError

#: Name of the group attribute that makes a folder an embedding store.
ATTRIBUTE = "napari_samkit_embeddings"
#: Layout version of the store; a store of another format is refused like a mismatch.
FORMAT = 1

#: What the widgets' store setting does (their tooltip).
STORE_HELP = ("Folder where image embeddings are kept on disk and reused (empty: off). A store made by "
              "'samkit embed IMAGE --store DIR' is used as it is; any other folder gets one store per image, "
              "model and precision. A run that is cancelled keeps the embeddings it finished.")

_WHAT = {
    "image": "image (its pixels or shape differ)",
    "model": "model (another model or other weights)",
    "precision": "encoder precision",
    "version": "napari-samkit version",
    "format": "store format",
}


def _checksum(data: np.ndarray) -> str:
    return hashlib.blake2b(memoryview(np.ascontiguousarray(data)).cast("B"), digest_size=16).hexdigest()


def read_store_attributes(path: str | os.PathLike) -> dict | None:
    """The attributes of the embedding store at ``path``, or None if it is not one."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return None
    import json

    try:
        attributes = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    value = attributes.get(ATTRIBUTE)
    return dict(value) if isinstance(value, dict) else None


def is_store(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder holding an embedding store."""
    return read_store_attributes(path) is not None


class EmbeddingStore:
    """Embeddings of one image on disk, with an in-memory LRU on top.

    The store is bound to an image, model, precision and version at its first use
    (:meth:`bind`, called by :meth:`get` and :meth:`put`, or at once by :meth:`open`).

    Args:
        path: the store's folder (created when missing; an existing folder must be
            empty or an embedding store).
        overwrite: discard what the store holds at its first use (any image, model).
        cache: memory cache in front of the disk (default: a new bounded one).
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False,
                 cache: EmbeddingCache | None = None) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.cache = cache if cache is not None else EmbeddingCache()
        self._group = None
        self._attributes: dict | None = None
        #: Entries read from disk and written to disk by this object (for reports and tests).
        self.reads = self.writes = 0

    @classmethod
    def open(cls, path: str | os.PathLike, key: EmbeddingKey, *, overwrite: bool = False,
             cache: EmbeddingCache | None = None) -> EmbeddingStore:
        """Open (or create) the store at ``path`` for ``key``'s image, model and precision.

        Raises:
            StoreMismatchError: the store holds another image, model, precision or version.
            StoreError: ``path`` is a file, or a folder with other contents.
        """
        store = cls(path, overwrite=overwrite, cache=cache)
        store.bind(key)
        return store

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r})"

    # ------------------------------------------------------------------ binding

    @property
    def attributes(self) -> dict | None:
        """What the store was made for (image, model, precision, version), or None before use."""
        return self._attributes or read_store_attributes(self.path)

    def bind(self, key: EmbeddingKey) -> None:
        """Make sure the store is for ``key``'s image, model, precision and version; create it if new."""
        wanted = {"format": FORMAT, **key.store_attributes}
        if self._attributes is not None:
            if self._attributes != wanted:
                raise self._mismatch(self._attributes, wanted)
            return
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not an embedding store; give a folder (it is created if "
                             "missing).")
        existing = read_store_attributes(self.path)
        if existing is None and self.path.is_dir() and any(self.path.iterdir()):
            raise StoreError(
                f"{self.path} is a folder with other files, not an embedding store; give an empty or new folder "
                "(it is created if missing)."
            )
        if existing is not None and (self.overwrite or existing != wanted):
            if not self.overwrite:
                raise self._mismatch(existing, wanted)
            shutil.rmtree(self.path)
            existing = None
        import zarr

        self._group = zarr.open_group(str(self.path), mode="a")
        if existing is None:
            self._group.attrs[ATTRIBUTE] = wanted
        self._attributes = wanted
        self.overwrite = False

    def _mismatch(self, existing: dict, wanted: dict) -> StoreMismatchError:
        differ = [name for name in _WHAT if existing.get(name) != wanted.get(name)]
        what = " and ".join(_WHAT[name] for name in differ)
        lines = [f"The embedding store {self.path} was made for another {what}:"]
        lines += [f"  {name}: store has {existing.get(name)!r}, this run needs {wanted.get(name)!r}" for name in differ]
        lines.append("Give a new folder for this image and model (one store per image, model and precision), "
                     "or overwrite the store (overwrite=True; samkit embed --overwrite) to start it afresh.")
        if "precision" in differ:
            lines.append(f"Or ask for the store's precision ({existing.get('precision')}: precision=... / "
                         "--precision).")
        return StoreMismatchError("\n".join(lines))

    # ------------------------------------------------------------------ entries

    def _array(self, name: str):
        try:
            return self._group[name]
        except Exception:  # noqa: BLE001 - missing, or metadata that does not parse: not there
            return None

    def get(self, key: EmbeddingKey, memory: bool = True) -> ImageEmbedding | None:
        """The stored embedding of ``key`` (memory first, then disk), or None if it is not complete.

        Args:
            memory: look in the memory cache first (False: on disk only; a cache
                shared with other users may hold embeddings that were never written).

        Raises:
            StoreMismatchError: ``key`` is for another image, model, precision or version.
        """
        cached = self.cache.get(key) if memory else None
        if cached is not None:
            return cached
        self.bind(key)
        array = self._array(key.entry_name)
        if array is None:
            return None
        attrs = dict(array.attrs)
        if not attrs.get("complete"):
            return None
        try:
            data = np.ascontiguousarray(array[...], dtype=np.float32)
        except Exception:  # noqa: BLE001 - a damaged chunk: compute it again
            return None
        if _checksum(data) != attrs.get("checksum"):
            return None
        embedding = ImageEmbedding(
            features=torch.from_numpy(data),
            original_size=tuple(attrs["original_size"]),
            input_size=tuple(attrs["input_size"]),
            image_size=int(attrs["image_size"]),
            model_name=str(attrs["model_name"]),
            key=key,
        )
        self.reads += 1
        self.cache.put(key, embedding)
        return embedding

    def put(self, embedding: ImageEmbedding) -> None:
        """Write an embedding (its ``key`` says where) at once; it reads as valid only once complete."""
        key = embedding.key
        if key is None:
            raise StoreError("This embedding has no key (it was not made by compute_embeddings); it cannot be stored.")
        self.bind(key)
        data = embedding.features.detach().float().cpu().contiguous().numpy()
        array = self._group.create_array(
            key.entry_name, shape=data.shape, dtype="float32", chunks=data.shape, compressors=None,
            overwrite=True, attributes={"complete": False},
        )
        array[...] = data
        array.attrs.update({
            "original_size": list(embedding.original_size),
            "input_size": list(embedding.input_size),
            "image_size": int(embedding.image_size),
            "model_name": embedding.model_name,
            "plane": None if key.plane is None else list(key.plane),
            "window": None if key.window is None else list(key.window),
            "view": key.view,
            "checksum": _checksum(data),
            "complete": True,
        })
        self.writes += 1
        self.cache.put(key, embedding)

    def __contains__(self, key: EmbeddingKey) -> bool:
        return self.get(key) is not None

    def entry_names(self) -> list[str]:
        """Names of the complete entries on disk."""
        if self._group is None:
            if not is_store(self.path):
                return []
            import zarr

            self._group = zarr.open_group(str(self.path), mode="a")
        names = []
        for name in sorted(self._group.array_keys()):
            array = self._array(name)
            if array is not None and array.attrs.get("complete"):
                names.append(name)
        return names

    def __len__(self) -> int:
        return len(self.entry_names())


def store_in_folder(folder: str | os.PathLike, key: EmbeddingKey, name: str = "image") -> Path:
    """Where the widgets keep the store of ``key``'s image inside a folder of stores.

    ``folder`` itself if it is an embedding store (e.g. made by ``samkit embed``),
    else ``folder/<name>-<model>-<precision>-<signature>.zarr``: one store per
    image, model and precision, so switching layers or models never mixes them.
    """
    folder = Path(folder)
    if is_store(folder):
        return folder
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "image"
    model = key.model.split("@")[0]
    digest = hashlib.blake2b(f"{key.image}|{key.model}".encode(), digest_size=5).hexdigest()
    return folder / f"{safe}-{model}-{key.precision}-{digest}.zarr"


def open_in_folder(folder: str | os.PathLike, image, model, precision: str, name: str = "image",
                   cache: EmbeddingCache | None = None) -> tuple[EmbeddingStore, EmbeddingKey]:
    """``(store, key)``: the store of ``image`` inside a folder of stores (:func:`store_in_folder`)
    and the key of the whole image (``precision`` already resolved), so it is hashed once."""
    from .embedding import image_signature

    key = EmbeddingKey.create(image_signature(image), model, precision)
    return EmbeddingStore(store_in_folder(folder, key, name), cache=cache), key
