"""Numeric precision of the image encoder: exact float32 or faster bfloat16.

The precision is chosen, in order, by the argument of the call (the Predictor,
the widgets' setting and the CLI's ``--precision`` pass it), by the environment
variable ``NAPARI_SAMKIT_PRECISION`` (``float32`` or ``bfloat16``), and otherwise
defaults to ``float32``.
Only the image encoder runs in reduced precision; prompt encoding, mask decoding
and everything after stay float32.
"""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("float32", "bfloat16")
ENV_VAR = "NAPARI_SAMKIT_PRECISION"

def _check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    return precision


def resolve_precision(precision: str | None = None) -> str:
    """The precision in force for a call given ``precision`` (see module docstring)."""
    if precision is not None:
        return _check(precision)
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        return _check(env)
    return "float32"


def encoder_autocast(device: torch.device, precision: str | None = None):
    """Context manager that runs the encoder at the resolved precision."""
    if resolve_precision(precision) == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
