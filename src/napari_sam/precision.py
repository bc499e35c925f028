"""Numeric precision of the image encoder: exact float32 or faster bfloat16.

The precision is chosen, in order, by the argument of the call (the Predictor,
the widgets' setting and the CLI's ``--precision`` pass it), by the environment
variable ``NAPARI_SAMKIT_PRECISION``, and otherwise is ``auto``.

Values: ``float32`` (exact: the results of the official code up to float rounding;
the switch for identical results), ``bfloat16`` (the image encoder's matrix products
run in bfloat16; on a CPU with native bfloat16, AVX-512 BF16 or AMX, about 1.5x
faster for LiteMedSAM), or ``auto`` (the default: bfloat16 for models whose
bfloat16 masks were checked against float32 on real images,
``ModelSpec.bfloat16_checked``, on a CPU with native bfloat16; float32 otherwise,
e.g. on Apple silicon and on most laptop CPUs before AMD Zen 4).

What was checked (LiteMedSAM, ground-truth boxes through the zoomed windows of
``segment_boxes``, per-object IoU of the bfloat16 mask against the float32 mask;
``benchmarks/precision_agreement.py``, docs/performance.md): with TinyViT's patch
embedding, first stage and residual stream kept in float32
(:class:`~napari_sam.models.tiny_vit.TinyViT`), mean IoU 0.995 on DSB 2018 nuclei
(125), 0.997 and 0.996 on two confocal nuclei planes, 0.999 on coins and 0.986 on
the 182 small hematoxylin nuclei of ``skimage.data.immunohistochemistry`` (5th
percentile 0.950): above the 0.98 bar everywhere. The quality figures of the
automatic mode did not drop. Only the image encoder runs in reduced precision;
prompt encoding, mask decoding and everything after stay float32. The point-grid
generator stays float32 under ``auto`` (``encoder_bound=False``): its encoder is
about 10% of its time, and bfloat16 moved masks across its IoU and stability
thresholds (93% of the official masks found again instead of 100%).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch

from .errors import SettingsError

PRECISIONS = ("float32", "bfloat16")
#: Accepted values: the precisions, and "auto".
CHOICES = (*PRECISIONS, "auto")
ENV_VAR = "NAPARI_SAMKIT_PRECISION"
DEFAULT = "auto"


def _check(precision: str, source: str, spec) -> str:
    value = precision.strip().lower()
    if value not in CHOICES:
        raise SettingsError(f"Unknown precision {precision!r} ({source}); choose one of {', '.join(CHOICES)}.")
    if value == "auto":
        checked = spec is None or getattr(spec, "bfloat16_checked", False)
        return "bfloat16" if checked and native_bfloat16() else "float32"
    return value


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX-512 BF16 or AMX).

    Without it, torch emulates bfloat16 and gains little or nothing over float32.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None:
            try:
                if check():
                    return True
            except Exception:  # pragma: no cover - private API of some torch versions
                pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as stream:
            flags = next((line for line in stream if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None = None, spec=None, encoder_bound: bool = True) -> str:
    """The precision in force for a call given ``precision``: ``"float32"`` or ``"bfloat16"``.

    Args:
        precision: a value of :data:`CHOICES`, or None for the environment variable
            or the default (auto).
        spec: the model's :class:`~napari_sam.registry.ModelSpec`; ``auto`` picks
            bfloat16 only for models with ``bfloat16_checked`` (None: any model).
        encoder_bound: False for work where the image encoder is a small share of
            the time (the point-grid generator: ~10%); ``auto`` then stays float32,
            since bfloat16 would move its threshold-filtered masks for no gain.

    Raises:
        SettingsError: (a ValueError) for a value (argument or environment variable) not in :data:`CHOICES`.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if precision is not None:
        value, source = precision, "argument"
    elif env:
        value, source = env, f"environment variable {ENV_VAR}"
    else:
        value, source = DEFAULT, "default"
    if not encoder_bound and value.strip().lower() == "auto":
        value = "float32"
    return _check(value, source, spec)


def encoder_autocast(device: torch.device, precision: str | None = None, spec=None):
    """Context manager that runs the encoder of the model ``spec`` at the resolved precision."""
    if resolve_precision(precision, spec) == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
