"""The fine-tuning settings: one dataclass, from which the CLI flags and widget fields are made.

Each field carries its help text and range in its metadata (:func:`setting`);
:meth:`FineTuneSettings.check` is the one place where values are checked, and
:func:`add_arguments` / :func:`from_arguments` turn the fields into ``samkit train``
flags and back.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..errors import TrainingError


def setting(default: Any, help: str, low: float | None = None, high: float | None = None, cli: bool = True):
    """A dataclass field with its help text and the closed range ``[low, high]`` of its values."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "cli": cli})


@dataclass(frozen=True)
class FineTuneSettings:
    """How a model is fine-tuned (defaults measured on this package's benchmark data)."""

    epochs: int = setting(8, "passes over the training objects", 1, 10_000)
    learning_rate: float = setting(1e-4, "AdamW learning rate", 1e-7, 1.0)
    weight_decay: float = setting(0.01, "AdamW weight decay", 0.0, 1.0)
    objects_per_step: int = setting(8, "objects (of one view) per optimiser step", 1, 256)
    max_objects_per_epoch: int = setting(0, "objects drawn per epoch (0: every object once)", 0, 10_000_000)
    min_steps_per_epoch: int = setting(24, "optimiser steps per epoch at least: a few annotated objects are drawn "
                                           "again, with new prompts, until there are this many", 0, 100_000)
    correction_rounds: int = setting(2, "correction clicks simulated after the first prompt", 0, 16)
    point_fraction: float = setting(0.5, "share of objects first prompted by one click instead of a box", 0.0, 1.0)
    box_noise: float = setting(0.1, "box corner noise, as a fraction of the box side (the paper's 10%)", 0.0, 1.0)
    val_split: float = setting(0.2, "share of images held out for validation (whole images)", 0.0, 0.9)
    patience: int = setting(3, "stop after this many epochs without a better validation IoU", 1, 10_000)
    seed: int = setting(0, "random seed (prompts, split, order)", 0, 2**31 - 1)
    zoom: bool = setting(True, "also train on the zoomed windows segment_boxes uses for small objects")
    whole_image: bool = setting(True, "also train on the whole image, as the annotator shows it")
    train_prompt_encoder: bool = setting(True, "train the prompt encoder too (else the mask decoder only)")

    def check(self) -> FineTuneSettings:
        """``self`` if every value is in range; else :class:`TrainingError` naming the setting."""
        for item in fields(self):
            value = getattr(self, item.name)
            low, high = item.metadata["low"], item.metadata["high"]
            if isinstance(item.default, bool):
                if not isinstance(value, bool):
                    raise TrainingError(f"{item.name} must be True or False; got {value!r}.")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TrainingError(f"{item.name} must be a number; got {value!r}.")
            if isinstance(item.default, int) and not float(value).is_integer():
                raise TrainingError(f"{item.name} must be a whole number; got {value!r}.")
            if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
                raise TrainingError(f"{item.name} must be between {low:g} and {high:g} ({item.metadata['help']}); "
                                    f"got {value!r}.")
        return self

    def with_values(self, **values: Any) -> FineTuneSettings:
        unknown = sorted(set(values) - {f.name for f in fields(self)})
        if unknown:
            raise TrainingError(f"Unknown fine-tuning setting(s) {', '.join(unknown)}; known: "
                                f"{', '.join(f.name for f in fields(self))}.")
        return replace(self, **values).check()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that change what is learned (a run can be resumed only with the same)."""
        out = self.as_dict()
        for name in ("epochs", "patience"):
            out.pop(name)
        return out


def describe(item) -> str:
    low, high = item.metadata["low"], item.metadata["high"]
    span = f"; {low:g}-{high:g}" if low is not None and high is not None else ""
    return f"{item.metadata['help']} (default {item.default}{span})"


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One ``--flag`` per setting (``--no-flag`` for the switches)."""
    for item in fields(FineTuneSettings):
        if not item.metadata["cli"]:
            continue
        flag = "--" + item.name.replace("_", "-")
        if isinstance(item.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=item.default, help=describe(item))
        else:
            parser.add_argument(flag, type=type(item.default), default=item.default, help=describe(item))


def from_arguments(args: argparse.Namespace) -> FineTuneSettings:
    return FineTuneSettings(**{f.name: getattr(args, f.name) for f in fields(FineTuneSettings)}).check()
