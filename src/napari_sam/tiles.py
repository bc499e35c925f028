"""Tiles of a large plane: cores that partition it, windows that overlap by a halo.

An encoder sees a square input of a fixed side (1,024 px for SAM, 256 px for
LiteMedSAM); a slide squeezed into it loses its small objects. Planes larger than
one tile are therefore handled tile by tile, at native resolution:

* The **cores** (at most ``tile x tile`` pixels, the plane split evenly) partition
  the plane; each tile's **window** is its core grown by ``halo`` pixels on every
  side (clipped to the plane). The model sees the window; an object belongs to the
  tile whose core holds its centre, so an object up to ``2 x halo`` pixels across
  is whole in the window of the tile that owns it, and no object is counted twice.
  (These are micro-sam's ``tile_shape`` and ``halo``.)
* **Defaults per model** (:func:`default_tiling`) keep objects at the scale the
  model was trained on: the window of a SAM tile is its 1,024 px input; a
  LiteMedSAM tile is 768 px with a 64 px halo (an 896 px window, which its zoomed
  box refinement sees at the size it segments best).
* A **prompt** is answered from the tile whose window holds it with the most margin
  (:meth:`TileGrid.tile_for`); a box no window can hold goes to the coarse view of
  the whole plane.

In one sentence for people: *tile* is the side of the piece of the image the model
looks at once (in image pixels, larger is faster but shrinks small objects), *halo*
the overlap added around it, at least half the diameter of the largest object.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .automatic.parameters import Parameter, check_table
from .errors import SamkitError, SettingsError

Window = tuple[int, int, int, int]

#: Default ``(tile, halo)`` for models with a 1,024 px input (SAM, MobileSAM): a 1,024 px window.
SAM_TILING = (896, 64)
#: Default ``(tile, halo)`` for models with a small input (LiteMedSAM): a 640 px window, which
#: the zoomed box refinement covers with its per-image window budget (see automatic.windows).
SMALL_INPUT_TILING = (768, 64)
#: A model with a 1,024 px input answers prompts from tiles on planes whose longest side is more
#: than this many times its input (below, from the whole plane, exactly as Meta's SamPredictor).
TILE_PROMPTS_ABOVE = 2.0


#: The tiling settings (``samkit segment/embed --tile --halo``, the automatic widget's fields);
#: 0 means the model's default (:func:`default_tiling`).
TILING_PARAMETERS: dict[str, Parameter] = {
    p.name: p
    for p in (
        Parameter("tile", int, 0, 0, 65_536, 64,
                  "Side of the piece of a large image the model looks at once, in image pixels (0: the model's "
                  "default, 896 for SAM models and 768 for LiteMedSAM). Images no larger than one tile are not "
                  "tiled. Larger is faster but shrinks small objects.", strategies=()),
        Parameter("halo", int, 0, 0, 4_096, 8,
                  "Overlap added around each tile, in pixels (0: the model's default, 64): at least half the "
                  "diameter of the largest object, so that each object is whole in the tile that keeps it.",
                  strategies=()),
    )
}


def check_tiling(tile: int | None = None, halo: int | None = None) -> dict[str, int]:
    """``tile`` and ``halo`` checked against :data:`TILING_PARAMETERS` (None or 0: the model's default).

    Raises:
        PromptError: a value of the wrong kind or out of range; SettingsError: a tile under 64 px
            or a halo of half the tile or more.
    """
    checked = check_table(TILING_PARAMETERS, {"tile": tile, "halo": halo}, "tiling setting")
    if checked["tile"] and checked["tile"] < 64:
        raise SettingsError(f"tile must be at least 64 pixels (or 0 for the model's default), got {checked['tile']}.")
    if checked["tile"] and checked["halo"] and 2 * checked["halo"] >= checked["tile"]:
        raise SettingsError(f"halo must be less than half the tile ({checked['tile']} px), got {checked['halo']}.")
    return checked


def default_tiling(spec) -> tuple[int, int]:
    """``(tile, halo)`` in image pixels for a model (its :class:`~napari_sam.registry.ModelSpec`)."""
    return SMALL_INPUT_TILING if spec.zooms_prompts else SAM_TILING


def resolve_tiling(spec, tile: int | None = None, halo: int | None = None) -> tuple[int, int]:
    """``(tile, halo)``: the given values (None or 0 for the model's default), checked.

    Raises:
        SettingsError: a tile under 64 px, a negative halo, or a halo of half the tile or more.
    """
    checked = check_tiling(tile, halo)
    default_tile, default_halo = default_tiling(spec)
    tile = checked["tile"] or default_tile
    halo = checked["halo"] or default_halo
    if 2 * halo >= tile:
        raise SettingsError(f"halo must be between 0 and half the tile ({tile // 2 - 1}), got {halo}; it is the "
                          "overlap around each tile, at least half the diameter of the largest object.")
    return tile, halo


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes:
        index: position in the grid's raster order.
        row, col: grid row and column.
        core: ``(x0, y0, x1, y1)`` pixels this tile owns (cores partition the plane).
        window: the core grown by the halo, clipped to the plane: what the model sees.
    """

    index: int
    row: int
    col: int
    core: Window
    window: Window

    def owns(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which points ``(x, y)`` (plane pixels, any shape) lie in the core."""
        x0, y0, x1, y1 = self.core
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    def cut_edges(self, shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
        """``(left, top, right, bottom)``: window edges inside the plane (an object there may be cut)."""
        h, w = shape
        x0, y0, x1, y1 = self.window
        return x0 > 0, y0 > 0, x1 < w, y1 < h


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an ``(H, W)`` plane (see the module docstring).

    Attributes:
        shape: ``(H, W)``.
        tile: core side in pixels.
        halo: overlap on each side in pixels.
    """

    shape: tuple[int, int]
    tile: int
    halo: int

    def __post_init__(self) -> None:
        if self.tile < 1 or self.halo < 0:
            raise SamkitError(f"A tile grid needs tile >= 1 and halo >= 0; got {self.tile} and {self.halo}.")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @classmethod
    def for_model(cls, shape: tuple[int, int], spec, tile: int | None = None, halo: int | None = None) -> TileGrid:
        """The grid of a plane for a model (its defaults unless ``tile`` / ``halo`` are given)."""
        return cls(shape, *resolve_tiling(spec, tile, halo))

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.shape[0] / self.tile))

    @property
    def cols(self) -> int:
        return max(1, math.ceil(self.shape[1] / self.tile))

    @property
    def step(self) -> tuple[int, int]:
        """``(rows, cols)`` pixels between cores: the plane split evenly, at most ``tile`` each."""
        return math.ceil(self.shape[0] / self.rows), math.ceil(self.shape[1] / self.cols)

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def single(self) -> bool:
        """The plane fits in one window (``tile + 2 x halo``): no tiling needed."""
        return max(self.shape) <= self.tile + 2 * self.halo

    def __getitem__(self, index: int) -> Tile:
        if not 0 <= index < len(self):
            raise IndexError(f"Tile {index} is not in a grid of {len(self)}.")
        h, w = self.shape
        row, col = divmod(int(index), self.cols)
        step_y, step_x = self.step
        x0, y0 = col * step_x, row * step_y
        x1, y1 = min(x0 + step_x, w), min(y0 + step_y, h)
        window = (max(0, x0 - self.halo), max(0, y0 - self.halo), min(w, x1 + self.halo), min(h, y1 + self.halo))
        return Tile(int(index), row, col, (x0, y0, x1, y1), window)

    def __iter__(self) -> Iterator[Tile]:
        return (self[i] for i in range(len(self)))

    @property
    def windows(self) -> list[Window]:
        """Every tile's window, in raster order."""
        return [t.window for t in self]

    def tile_for(self, box) -> Tile | None:
        """The tile whose window holds ``box`` (x0, y0, x1, y1) with the most margin, or None when no
        window holds it whole (then the prompt needs the coarse view)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        step_y, step_x = self.step
        col = min(max(int(((x0 + x1) / 2) // step_x), 0), self.cols - 1)
        row = min(max(int(((y0 + y1) / 2) // step_y), 0), self.rows - 1)
        best, best_margin = None, -math.inf
        for r in range(max(0, row - 1), min(self.rows, row + 2)):
            for c in range(max(0, col - 1), min(self.cols, col + 2)):
                tile = self[r * self.cols + c]
                wx0, wy0, wx1, wy1 = tile.window
                inside = (x0 >= wx0, y0 >= wy0, x1 <= wx1, y1 <= wy1)
                if not all(inside):
                    continue
                cut = tile.cut_edges(self.shape)  # the plane's own edges cut nothing
                gaps = (x0 - wx0, y0 - wy0, wx1 - x1, wy1 - y1)
                margin = min((g for g, c in zip(gaps, cut) if c), default=math.inf)
                if best is None or margin > best_margin:
                    best, best_margin = tile, margin
        return best
