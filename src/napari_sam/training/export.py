"""Save a trained model as a user model: an official-layout state_dict plus its description."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from ..io import write_atomically
from ..models.sam import SamModel
from ..user_models import METADATA_FORMAT, check_model_name, checkpoint_path, metadata_path, models_dir


def save_user_model(
    model: SamModel,
    name: str,
    *,
    base_name: str,
    folder: str | os.PathLike | None = None,
    overwrite: bool = False,
    training: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    prompt_types: tuple[str, ...] = ("boxes", "points", "masks"),
) -> tuple[Path, Path]:
    """Write ``model`` as the user model ``name``: ``<name>.pth`` and ``<name>.json``.

    The checkpoint holds every tensor of the model under the official names
    (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so it loads
    with ``load_model(path)`` or Meta's ``sam_model_registry``. Both files are
    written atomically, the checkpoint first: a model is listed only once its
    description exists, and then its checkpoint is complete.

    Args:
        prompt_types: the prompts the model was trained on (its registry entry's).

    Returns:
        ``(checkpoint_path, metadata_path)``.
    """
    from .. import __version__
    from ..weights import file_sha256

    check_model_name(name)
    folder = models_dir(folder)
    checkpoint, metadata_file = checkpoint_path(name, folder), metadata_path(name, folder)
    if metadata_file.exists() and not overwrite:
        raise TrainingError(f"A model called {name!r} exists already ({checkpoint}); choose another name or "
                            "pass overwrite=True.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingError(f"Cannot create the model folder {folder}: {error}. Set NAPARI_SAMKIT_MODELS to a "
                            "writable folder.") from None
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata_file.unlink(missing_ok=True)  # unlisted while its checkpoint is replaced
    write_atomically(checkpoint, lambda part: torch.save(state, part))
    description = {
        "format": METADATA_FORMAT,
        "name": name,
        "base_model": base_name,
        "architecture": model.spec.architecture,
        "prompt_types": list(prompt_types),
        "checkpoint": checkpoint.name,
        "size_bytes": checkpoint.stat().st_size,
        "sha256": file_sha256(checkpoint),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "training": training or {},
        "validation": validation or {},
    }
    text = json.dumps(description, indent=2, default=float)
    write_atomically(metadata_file, lambda part: part.write_text(text, encoding="utf-8"))
    return checkpoint, metadata_file
