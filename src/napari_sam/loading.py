"""Load a model from a registry name or a checkpoint file.

The architecture of a checkpoint file is detected from its state_dict (key sets
and tensor shapes) when not given, so a renamed official file still loads.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from .embedding import mark_loaded
from .errors import CheckpointError
from .models.build import build_model
from .models.sam import SamModel
from .registry import ARCHITECTURES, DEFAULT_MODEL, ModelSpec, get_spec, is_known_model
from .weights import ensure_weights

#: Keys that some checkpoint writers add and that carry no weights of ours.
_IGNORED_KEYS = ("pixel_mean", "pixel_std")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CPU (this package is built for CPUs; pass "cuda" or "mps" to use one)."""
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise CheckpointError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'mps'. ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("Device 'cuda' was asked for but no CUDA GPU is available; use device='cpu'.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise CheckpointError("Device 'mps' was asked for but Apple's MPS is not available; use device='cpu'.")
    return resolved


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` state_dict.

    Accepts a plain state_dict, or a dict with the state_dict under ``"model"`` or
    ``"state_dict"``. Only tensors are loaded (``weights_only=True``).

    Raises:
        CheckpointError: naming the file, for a missing, empty, truncated or
            non-checkpoint file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint file {path} does not exist. Check the path, or give a registry name.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it (.pth or .pt).")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"Checkpoint file {path} is empty (0 bytes). Download it again.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for damaged or foreign files
        raise CheckpointError(
            f"{path} ({size:,} bytes) is not a readable PyTorch checkpoint: it may be truncated by an "
            f"interrupted download, or not a checkpoint at all. Download it again. ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if key in loaded and isinstance(loaded[key], dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a Segment Anything state_dict (expected a mapping of "
            f"parameter names to tensors, found {type(loaded).__name__})."
        )
    return {k: v for k, v in loaded.items() if k not in _IGNORED_KEYS}


def detect_architecture(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Guess the architecture from key names and shapes; None if it is none of ours."""
    if not any(k.startswith("mask_decoder.") for k in state_dict):
        return None
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is not None:  # ViT: embedding width names the size
        return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(int(patch.shape[0]))
    stem = state_dict.get("image_encoder.patch_embed.seq.0.c.weight")
    if stem is not None:  # TinyViT: 3x3 stem for MobileSAM, 1x1 for LiteMedSAM
        return {3: "vit_t", 1: "lite_medsam"}.get(int(stem.shape[-1]))
    return None


def _describe(state_dict: dict[str, torch.Tensor]) -> str:
    prefixes = sorted({k.split(".")[0] for k in state_dict})
    return f"{len(state_dict)} tensors with top-level names {', '.join(prefixes[:6])}"


def model_from_state_dict(
    state_dict: dict[str, torch.Tensor], spec: ModelSpec, source: str, copy: bool = True
) -> SamModel:
    """Build ``spec``'s architecture and load ``state_dict`` with a strict key check.

    The module tree is built without random initialisation and the checkpoint's
    tensors are assigned to it, converted to the parameters' dtypes.

    Args:
        state_dict: ``{name: tensor}`` with the official key layout.
        spec: the registry entry whose architecture to build.
        source: how to name the checkpoint in error messages.
        copy: copy the tensors (the default), so the model shares no memory with
            ``state_dict``; False hands them over (for a dict nobody else holds,
            as :func:`load_model`'s freshly read one: no second copy in memory).
    """
    model = build_model(spec, initialise=False)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state_dict[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if expected[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or wrong_shape:
        found = detect_architecture(state_dict)
        lines = [
            f"{source} does not match the {spec.architecture} architecture "
            f"(detected: {found or 'none of ' + ', '.join(ARCHITECTURES)}; file has {_describe(state_dict)})."
        ]
        if missing:
            lines.append(f"  {len(missing)} missing, e.g. {', '.join(missing[:3])}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        if wrong_shape:
            lines.append(f"  {len(wrong_shape)} of another shape, e.g. {wrong_shape[0]}")
        lines.append("  Give the right model_type, or the checkpoint that belongs to it.")
        raise CheckpointError("\n".join(lines))
    _check_values(state_dict, expected, source)
    tensors = {k: v.detach().to(expected[k].dtype, copy=copy) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def _check_values(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights that would load and then compute garbage: sparse, non-float or non-finite tensors."""
    for name, tensor in state_dict.items():
        if tensor.layout != torch.strided:
            raise CheckpointError(f"{source} holds a sparse tensor ({name}); weights must be dense. Use the original "
                                  "checkpoint.")
        if expected[name].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{source} holds {name} as {str(tensor.dtype).replace('torch.', '')}, not floating "
                                  "point: it is not a trained model's weights. Use the original checkpoint.")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source} has NaN or infinite values in {name}: the file is damaged (or came from "
                                  "a diverged training run). Download it again, or use another checkpoint.")


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    model_type: str | None = None,
    device: str | torch.device | None = None,
    allow_download: bool = True,
) -> SamModel:
    """Load a model by registry name (e.g. ``"lite_medsam"``, ``"vit_b"``) or checkpoint path.

    Args:
        name_or_path: a name from :func:`napari_sam.list_models`, or a path to a
            checkpoint (``.pth``/``.pt`` state_dict).
        model_type: the architecture of a checkpoint file (one of ``vit_b``,
            ``vit_l``, ``vit_h``, ``vit_t``, ``lite_medsam``); detected from the
            file when None.
        device: torch device; CPU by default.
        allow_download: download a registry model's weights if they are not cached.

    Returns:
        A :class:`SamModel` in eval mode with ``.spec`` set.

    Raises:
        CheckpointError, UnknownModelError, DownloadError: with a message that
            says what was expected and found, and what to do.
    """
    resolved_device = resolve_device(device)
    if model_type is not None and model_type not in ARCHITECTURES:
        raise CheckpointError(f"Unknown model_type {model_type!r}; choose one of {', '.join(ARCHITECTURES)}.")
    key = os.fspath(name_or_path)
    # A name means the registry's verified weights, even if a file of that name lies in the
    # current folder; a file is given as a path (a Path object, or text with a folder: ./lite_medsam).
    as_path = isinstance(name_or_path, os.PathLike) or any(sep in key for sep in ("/", "\\"))
    if is_known_model(key) and not as_path:
        spec = get_spec(key)
        if model_type is not None and model_type != spec.architecture:
            raise CheckpointError(
                f"Model {key!r} is a {spec.architecture} model, not {model_type}; drop model_type or give a file."
            )
        path = ensure_weights(spec, allow_download=allow_download)
        state_dict = read_state_dict(path)
        source = f"Checkpoint {path} of model {key!r}"
        origin = None  # the registry's SHA-256 names the weights
    else:
        path = Path(key).expanduser()
        if not path.exists() and not any(sep in key for sep in ("/", "\\")) and not path.suffix:
            get_spec(key)  # a misspelt name: raise UnknownModelError with the known names
        state_dict = read_state_dict(path)
        architecture = model_type or detect_architecture(state_dict)
        if architecture is None:
            raise CheckpointError(
                f"Cannot tell which Segment Anything architecture {path} holds ({_describe(state_dict)}). "
                f"Pass model_type (one of {', '.join(ARCHITECTURES)}) if it is one of them."
            )
        # Each architecture's registry entry (same name) gives its preprocessing and prompts.
        spec = replace(get_spec(architecture), name=path.stem, file_name=path.name, url=None,
                       size_bytes=None, sha256="", embedded_in=None, embedded_path=None,
                       description=f"{architecture} from {path}")
        source = f"Checkpoint {path}"
        origin = path  # no SHA-256: the file's path, size and mtime name the weights
    model = model_from_state_dict(state_dict, spec, source, copy=False).to(resolved_device)
    mark_loaded(model, origin)
    return model
