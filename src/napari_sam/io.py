"""Reading images and prompt files, writing label images and overlays.

No napari, no Qt: used by the command line and by scripts.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import InputFileError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF, PNG or JPEG file into an array (``H x W``, ``H x W x C`` or a stack).

    Raises:
        InputFileError: for a missing, unreadable or unsupported file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Image file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputFileError(
            f"Cannot read {path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(IMAGE_SUFFIXES)}."
        )
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as handle:
            if handle.mode in ("P", "CMYK", "YCbCr", "LA"):
                handle = handle.convert("RGBA" if "transparency" in handle.info or handle.mode == "LA" else "RGB")
            return np.asarray(handle)
    except InputFileError:
        raise
    except Exception as error:  # any decoder failure: say which file and why
        raise InputFileError(f"Cannot read image {path}: {type(error).__name__}: {error}") from None


def label_dtype(max_label: int) -> np.dtype:
    """Smallest unsigned dtype holding ``max_label``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then rename the result to ``path``.

    A failed or interrupted write never leaves a half-written file under ``path``
    (an existing file stays as it was); the temporary file is always removed.
    """
    path = Path(path)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    return path


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image as a compressed TIFF (smallest unsigned dtype that fits).

    The file is written to a temporary name and renamed, so a failed write never
    leaves a half-written label image under ``path``.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise InputFileError(f"Label images are written as TIFF: give an output name ending in .tif (got {path.name}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    data = labels.astype(label_dtype(int(labels.max(initial=0))), copy=False)
    return write_atomically(path, lambda part: tifffile.imwrite(part, data, compression="zlib"))


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise InputFileError(f"CSV file {path} does not exist.")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise InputFileError(f"CSV file {path} is empty.")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_table(path: Path, min_columns: int, max_columns: int, what: str) -> np.ndarray:
    rows = _rows(path)
    if not any(_is_number(cell) for cell in rows[0]):
        rows = rows[1:]  # a header row
    if not rows:
        raise InputFileError(f"CSV file {path} has a header but no {what} rows.")
    table = []
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not min_columns <= len(cells) <= max_columns:
            raise InputFileError(
                f"{path}, data row {number}: expected {what} with {min_columns}"
                f"{'-' + str(max_columns) if max_columns != min_columns else ''} columns, got {len(cells)}: {row}"
            )
        try:
            values = [float(cell) for cell in cells]
        except ValueError:
            raise InputFileError(f"{path}, data row {number}: not a number in {row}.") from None
        if not np.all(np.isfinite(values)):
            raise InputFileError(f"{path}, data row {number}: coordinates must be finite numbers, got {row}.")
        table.append(values + [np.nan] * (max_columns - len(values)))
    return np.asarray(table, dtype=np.float64)


def read_boxes_csv(path: str | os.PathLike) -> np.ndarray:
    """Boxes ``N x 4`` (x0, y0, x1, y1) from a CSV file; a header row is optional."""
    return _numeric_table(Path(path), 4, 4, "boxes (x0,y0,x1,y1)")


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points from a CSV of rows ``x,y[,label[,object]]`` (header optional).

    ``label`` is 1 (foreground, the default) or 0 (background). ``object`` groups
    points into objects (default: every row is its own object).

    Returns:
        ``(coords N x 2, labels N, objects N)``.
    """
    table = _numeric_table(Path(path), 2, 4, "points (x,y[,label[,object]])")
    coords = table[:, :2]
    labels = np.where(np.isnan(table[:, 2]), 1, table[:, 2])
    if not np.isin(labels, (0, 1)).all():
        raise InputFileError(f"{path}: point labels must be 1 (foreground) or 0 (background).")
    objects = np.where(np.isnan(table[:, 3]), np.arange(1, len(table) + 1), table[:, 3])
    return coords, labels.astype(np.int64), objects.astype(np.int64)


def overlay_image(image_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB ``uint8`` picture of ``labels`` over an image: coloured fill and white outlines.

    Background pixels keep the image's values; each object gets a colour from a
    fixed palette (by id), blended with weight ``alpha``.
    """
    from skimage.segmentation import find_boundaries

    base = np.asarray(image_rgb, dtype=np.float32)
    picture = base.copy()
    inside = labels > 0
    if inside.any():
        rng = np.random.default_rng(0)
        palette = rng.uniform(60, 255, size=(int(labels.max()) + 1, 3)).astype(np.float32)
        picture[inside] = (1 - alpha) * base[inside] + alpha * palette[labels[inside]]
        picture[find_boundaries(labels, mode="inner")] = 255.0
    return np.clip(picture, 0, 255).astype(np.uint8)


def write_png(path: str | os.PathLike, picture: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return path
