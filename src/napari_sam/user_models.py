"""The user's own models: fine-tuned checkpoints saved in a per-user model folder.

A user model is two files in :func:`models_dir`:

* ``<name>.pth``: the whole model as a state_dict in the official layout
  (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``), so it also loads
  in Meta's code or anywhere a base checkpoint loads;
* ``<name>.json``: its metadata (:data:`METADATA_FORMAT`): base model,
  architecture, the prompts it was trained on, the file's size and SHA-256, the
  training data, epochs and validation figures, the date and the package version.

Every such pair is a registry entry under ``<name>`` (:func:`user_model_specs`), so
``load_model("my-lab-v1")``, ``samkit models`` and the widgets' model lists know it.
The folder is, first wins: an explicit ``directory`` argument, the environment
variable ``NAPARI_SAMKIT_MODELS``, ``platformdirs.user_data_path("napari-samkit") /
"models"``.

This module imports neither torch nor napari.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import CheckpointError

#: Environment variable that overrides the user model folder.
MODELS_ENV_VAR = "NAPARI_SAMKIT_MODELS"
#: ``format`` value of a user model's metadata file.
METADATA_FORMAT = "napari-samkit-model/1"
#: Allowed model names: letters, digits, ``-``, ``_`` and ``.``, starting with a letter or digit.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def models_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the user's own models (not created here)."""
    if directory is not None:
        return Path(directory).expanduser()
    from_env = os.environ.get(MODELS_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    import platformdirs

    return platformdirs.user_data_path("napari-samkit") / "models"


def check_model_name(name: str) -> str:
    """``name`` if it can name a new user model; else :class:`CheckpointError` saying why."""
    from .registry import MODELS

    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise CheckpointError(
            f"Model name {name!r} is not usable: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (e.g. my-lab-v1)."
        )
    if name in MODELS:
        raise CheckpointError(f"{name!r} is a built-in model's name; choose another name for your model.")
    return name


def metadata_path(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    return models_dir(directory) / f"{name}.json"


def checkpoint_path(name: str, directory: str | os.PathLike[str] | None = None) -> Path:
    return models_dir(directory) / f"{name}.pth"


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a user model (its ``.json`` file).

    Raises:
        CheckpointError: the file is unreadable or not a napari-samkit model's metadata.
    """
    path = Path(path)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Cannot read the model metadata {path}: {error}. Delete it or train again.") from None
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        raise CheckpointError(f"{path} is not a napari-samkit model description (format {METADATA_FORMAT}).")
    return metadata


def spec_from_metadata(metadata: dict[str, Any], directory: Path):
    """The :class:`~napari_sam.registry.ModelSpec` of a user model from its metadata."""
    from .registry import MODELS

    base = MODELS[metadata["architecture"]]
    prompts = tuple(metadata.get("prompt_types") or base.prompt_types)
    figures = metadata.get("validation", {}).get("best", {})
    summary = ", ".join(f"{k} {v:.3f}" for k, v in figures.items() if isinstance(v, (int, float)))
    return replace(
        base,
        name=metadata["name"],
        prompt_types=prompts,
        file_name=metadata["checkpoint"],
        url=None,
        size_bytes=int(metadata["size_bytes"]),
        sha256=metadata["sha256"],
        embedded_in=None,
        embedded_path=None,
        local_path=str(directory / metadata["checkpoint"]),
        base_model=metadata.get("base_model", base.name),
        automatic=base.automatic_strategy,
        invert_dark_objects=False,  # trained on the images as they are
        description=f"fine-tuned from {metadata.get('base_model', base.name)}"
        + (f" ({summary})" if summary else "")
        + f", {metadata.get('created', '')[:10]}",
    )


def user_model_specs(directory: str | os.PathLike[str] | None = None) -> dict:
    """``{name: ModelSpec}`` of every readable user model in the folder (none if it is absent).

    Files that are not a complete user model (metadata without its checkpoint, a
    foreign JSON, a name that shadows a built-in model) are left out.
    """
    from .registry import ARCHITECTURES, MODELS

    folder = models_dir(directory)
    specs = {}
    try:
        candidates = sorted(folder.glob("*.json"))
    except OSError:
        return specs
    for path in candidates:
        try:
            metadata = read_metadata(path)
        except CheckpointError:
            continue
        name = metadata.get("name")
        if (
            name != path.stem
            or name in MODELS
            or metadata.get("architecture") not in ARCHITECTURES
            or not (folder / str(metadata.get("checkpoint", ""))).is_file()
        ):
            continue
        try:
            specs[name] = spec_from_metadata(metadata, folder)
        except (KeyError, TypeError, ValueError):
            continue
    return specs


def delete_user_model(name: str, directory: str | os.PathLike[str] | None = None) -> None:
    """Remove a user model's checkpoint and metadata."""
    for path in (checkpoint_path(name, directory), metadata_path(name, directory)):
        path.unlink(missing_ok=True)
