"""The automatic generator's parameters: one table, with Meta's defaults, ranges and help.

:data:`AMG_PARAMETERS` is the one source of :func:`~napari_sam.automatic.generate_masks`'
parameters: ``samkit segment``'s flags, the automatic widget's fields and the range
checks (:func:`check_amg_parameters`, called by ``generate_masks`` itself) come from
it. The ranges are those where a value means something: a negative crop overlap, a
downscale factor of 0 or an NMS threshold of -1 is refused with what it should be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PromptError
from .proposals import POLARITIES

#: Automatic prompts: auto (by the model: point grid for SAM, box proposals for box-only models),
#: Meta's point grid, or box proposals.
STRATEGIES = ("auto", "points", "boxes")


@dataclass(frozen=True)
class Parameter:
    """One parameter of :func:`~napari_sam.automatic.generate_masks`.

    Attributes:
        kind: ``int``, ``float`` or ``str`` (a choice among ``choices``).
        minimum, maximum, step: the widget's range (numbers).
        tooltip: what the parameter does, for people.
        strategies: the strategies that use it (``"points"``: Meta's point grid,
            ``"boxes"``: box proposals); the others ignore it.
        choices: the values a ``str`` parameter takes.
        help: one line for ``samkit segment --help``.
    """

    name: str
    kind: type
    default: float | str
    minimum: float
    maximum: float
    step: float
    tooltip: str
    strategies: tuple[str, ...] = ("points",)
    choices: tuple[str, ...] = ()

    @property
    def help(self) -> str:
        """The tooltip's first sentence (the command line's help)."""
        return self.tooltip.split(". ")[0].rstrip(".")

    def used_by(self, strategy: str) -> bool:
        """Whether the ``"points"`` or ``"boxes"`` strategy uses this parameter."""
        return strategy in self.strategies

    def check(self, value) -> int | float | str:
        """``value`` as this parameter's kind, inside its range; else a :class:`PromptError` saying so."""
        if self.choices:
            if value not in self.choices:
                raise PromptError(f"{self.name} must be one of {', '.join(map(repr, self.choices))} "
                                  f"(default {self.default!r}); got {value!r}. {self.tooltip}")
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PromptError(f"{self.name} must be a number, got {value!r}.") from None
        if math.isnan(number) or not self.minimum <= number <= self.maximum:
            raise PromptError(f"{self.name} must be between {self.minimum:g} and {self.maximum:g} "
                              f"(default {self.default:g}); got {value!r}. {self.tooltip}")
        if self.kind is int:
            if number != int(number):
                raise PromptError(f"{self.name} must be a whole number, got {value!r}.")
            return int(number)
        return number


BOTH = ("points", "boxes")
BOXES = ("boxes",)


def _choice(name: str, choices: tuple[str, ...], default: str, tooltip: str, strategies: tuple[str, ...]) -> Parameter:
    return Parameter(name, str, default, 0, 0, 0, tooltip, strategies, choices)


#: Zoomed encoder windows the box strategy may use per 512 x 512 pixels of image by default: about
#: 0.6 s each for LiteMedSAM on two CPU cores (see :mod:`.windows`); 48 keep
#: immunohistochemistry (262 windows unbounded) at 36 windows and 47 s.
DEFAULT_MAX_WINDOWS = 48

AMG_PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter("points_per_side", int, 32, 1, 256, 1,
                  "Points along each side of the image: the grid has points_per_side² prompts. More finds "
                  "smaller objects but takes longer (time grows with the square)."),
        Parameter("points_per_batch", int, 64, 1, 1024, 1,
                  "Prompts decoded together. Larger is a little faster and uses more memory; results do not change."),
        Parameter("pred_iou_thresh", float, 0.88, 0.0, 1.0, 0.01,
                  "Keep a mask only if the model's own estimate of its quality (predicted IoU) is above this. "
                  "Lower it to keep more, less certain masks; 0 turns the filter off.", strategies=BOTH),
        Parameter("stability_score_thresh", float, 0.95, 0.0, 1.0, 0.01,
                  "Keep a mask only if it barely changes when the logit cut-off moves by ± the offset below "
                  "(its stability score is at least this). Lower it to keep fuzzier objects.", strategies=BOTH),
        Parameter("stability_score_offset", float, 1.0, 0.0, 10.0, 0.1,
                  "How far the logit cut-off is moved to measure stability. Larger is stricter.", strategies=BOTH),
        Parameter("box_nms_thresh", float, 0.7, 0.0, 1.0, 0.01,
                  "Two masks whose boxes overlap more than this (IoU) are duplicates: the better one is kept. "
                  "Lower it to remove more overlapping masks.", strategies=BOTH),
        Parameter("crop_n_layers", int, 0, 0, 4, 1,
                  "Also run on zoomed-in crops: layer i cuts the image into (2^i)² tiles. Finds small objects "
                  "in large images; each layer costs an encoder run per tile. 0: whole image only."),
        Parameter("crop_nms_thresh", float, 0.7, 0.0, 1.0, 0.01,
                  "Box IoU above which masks from different crops are duplicates (the one from the smaller "
                  "crop is kept). Used when crop_n_layers > 0."),
        Parameter("crop_overlap_ratio", float, 512 / 1500, 0.0, 0.99, 0.01,
                  "How much neighbouring crops overlap, as a fraction of the image's short side (first crop "
                  "layer; it shrinks in deeper layers). Used when crop_n_layers > 0."),
        Parameter("crop_n_points_downscale_factor", int, 1, 1, 16, 1,
                  "Points per side in crop layer i are points_per_side divided by this to the power i "
                  "(fewer prompts in the small crops). Used when crop_n_layers > 0."),
        Parameter("min_mask_region_area", int, 0, 0, 100_000, 10,
                  "Fill holes and remove islands smaller than this many pixels in every mask, then drop new "
                  "duplicates. 0 turns it off.", strategies=BOTH),
        _choice("polarity", POLARITIES, "auto",
                "What the objects look like (box proposals): 'bright' on a dark background (fluorescence), "
                "'dark' on a bright one (bright field), or 'auto': decided from the image (stained colour "
                "bright-field images are read through their hematoxylin stain).", BOXES),
        Parameter("object_diameter", float, 0.0, 0.0, 2000.0, 1.0,
                  "Typical object diameter in pixels, for the box proposals: it sets how touching objects are "
                  "split. 0: estimated from the image.", BOXES),
        Parameter("max_windows", int, DEFAULT_MAX_WINDOWS, 0, 10_000, 1,
                  "Most zoomed encoder windows per 512 x 512 pixels of image (box proposals): small objects are "
                  "seen zoomed, one encoder run per window. Fewer is faster, with less zoom; 0: as many as the "
                  "zoom needs.",
                  BOXES),
    )
}



def amg_defaults() -> dict[str, float | str]:
    """Meta's default value of every parameter."""
    return table_defaults(AMG_PARAMETERS)


def check_table(table: dict[str, Parameter], values: dict, what: str) -> dict[str, int | float | str]:
    """Every given value checked against its parameter of ``table`` (None means the default).

    Args:
        what: what the parameters are, for the message (e.g. ``"propagation setting"``).

    Raises:
        PromptError: an unknown name, or a value of the wrong kind or outside its range.
    """
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise PromptError(f"Unknown {what}(s) {', '.join(unknown)}; known: {', '.join(table)}.")
    return {name: table[name].default if value is None else table[name].check(value) for name, value in values.items()}


def table_defaults(table: dict[str, Parameter]) -> dict[str, int | float | str]:
    """The default value of every parameter of ``table``."""
    return {name: p.default for name, p in table.items()}


def check_amg_parameters(**values) -> dict[str, int | float | str]:
    """Every given parameter checked against its range (None means the default); see :func:`check_table`."""
    return check_table(AMG_PARAMETERS, values, "automatic segmentation parameter")
