"""Reading images and prompt files, writing label images and overlays.

No napari, no Qt: used by the command line and by scripts.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import InputFileError
from .files import IMAGE_SUFFIXES


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

            with tifffile.TiffFile(path) as tiff:
                series = tiff.series[0]
                check_fits_in_memory(path, series.shape, series.dtype)
                return np.asarray(series.asarray())
        from PIL import Image

        with Image.open(path) as handle:
            if handle.mode in ("P", "CMYK", "YCbCr", "LA"):
                handle = handle.convert("RGBA" if "transparency" in handle.info or handle.mode == "LA" else "RGB")
            return np.asarray(handle)
    except InputFileError:
        raise
    except Exception as error:  # any decoder failure: say which file and why
        raise InputFileError(f"Cannot read image {path}: {type(error).__name__}: {error}") from None


#: An image may take at most this share of the machine's memory once decoded.
MEMORY_SHARE = 0.5


def open_image(path: str | os.PathLike):
    """An image file, read whole when small, else opened lazily (its pixels read window by window).

    TIFF files whose planes are large (see :func:`napari_sam.source.is_large`) or too
    large for memory come back as zarr arrays over the file (``tifffile``'s zarr
    interface; a pyramidal TIFF as the list of its levels, full resolution first);
    ``.zarr`` folders (a zarr array, or an OME-Zarr image: its multiscale levels) are
    always lazy; anything else is :func:`read_image`.

    Raises:
        InputFileError: for a missing, unreadable or unsupported file.
    """
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return _open_zarr(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return read_image(path)
    from .source import is_large

    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            shape, dtype, levels = series.shape, series.dtype, len(series.levels)
    except Exception as error:  # noqa: BLE001 - any decoder failure: say which file and why
        raise InputFileError(f"Cannot read image {path}: {type(error).__name__}: {error}") from None
    rgb_last = len(shape) == 3 and shape[-1] in (3, 4)
    plane = shape[-3:-1] if rgb_last else shape[-2:]
    needed = int(np.prod([int(v) for v in shape], dtype=np.float64)) * np.dtype(dtype).itemsize
    memory = physical_memory_bytes()
    if len(plane) == 2 and (is_large(plane) or (memory is not None and needed > MEMORY_SHARE * memory)):
        import zarr

        arrays = [zarr.open_array(tifffile.imread(path, aszarr=True, level=k), mode="r") for k in range(levels)]
        return arrays if len(arrays) > 1 else arrays[0]
    return read_image(path)


def _open_zarr(path: Path):
    """A zarr array, or the levels of an OME-Zarr multiscale image (full resolution first)."""
    import zarr

    if not path.is_dir():
        raise InputFileError(f"Image {path} does not exist (a .zarr image is a folder).")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # noqa: BLE001
        raise InputFileError(f"Cannot open {path} as zarr: {type(error).__name__}: {error}") from None
    if hasattr(node, "shape"):
        return node
    multiscales = dict(node.attrs).get("multiscales") or dict(node.attrs).get("ome", {}).get("multiscales")
    if multiscales:
        levels = [node[d["path"]] for d in multiscales[0]["datasets"]]
        return levels if len(levels) > 1 else levels[0]
    arrays = [name for name, item in node.members() if hasattr(item, "shape")]
    if len(arrays) == 1:
        return node[arrays[0]]
    raise InputFileError(f"{path} is a zarr group without multiscales metadata and with {len(arrays)} arrays; "
                         "give the path of the array itself (e.g. image.zarr/0).")


def physical_memory_bytes() -> int | None:
    """The machine's memory in bytes (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(path: Path, shape, dtype) -> None:
    """Refuse, before decoding, an image whose declared size would not fit (a 3 MB file may declare 60000^2)."""
    needed = int(np.prod([int(s) for s in shape], dtype=np.float64)) * np.dtype(dtype).itemsize
    memory = physical_memory_bytes()
    if memory is not None and needed > MEMORY_SHARE * memory:
        raise InputFileError(
            f"{path} declares a {' x '.join(str(int(s)) for s in shape)} {np.dtype(dtype)} image: "
            f"{needed / 2**30:.1f} GB decoded, more than half of this machine's {memory / 2**30:.1f} GB. Open it "
            "lazily instead (as zarr/OME-Zarr or a dask array, in Python or napari), or crop it first."
        )


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
        try:
            part.unlink(missing_ok=True)
        except OSError:  # e.g. a read-only file system: the write's own error is the one to report
            pass
    return path


#: Suffixes of the files the CLI writes: label images (a TIFF file, or a zarr folder that is
#: written tile by tile for images whose labels should not be held in memory), and pictures.
LABEL_SUFFIXES = (".tif", ".tiff", ".zarr")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def check_output_path(path: str | os.PathLike, what: str, suffixes: tuple[str, ...],
                      inputs: tuple = ()) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written.

    Args:
        path: the output file.
        what: its role for the message, e.g. ``"the label image (-o)"``.
        suffixes: allowed name endings (the first is suggested).
        inputs: files the command reads (or writes first): the output may not be one of them.

    Raises:
        InputFileError: wrong suffix, a folder, one of ``inputs``, or a place that cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        kinds = "/".join(dict.fromkeys(_PIL_FORMATS.get(suffix, suffix[1:].upper()) for suffix in suffixes))
        raise InputFileError(f"{what[0].upper() + what[1:]} is written as {kinds}: give a name ending in "
                             f"{suffixes[0]} (got {path.name}).")
    if path.is_dir() and not (path.suffix.lower() == ".zarr" and not any(path.glob("*.tif*"))):
        raise InputFileError(f"{what[0].upper() + what[1:]}, {path}, is a folder: give a file name, e.g. "
                             f"{path / ('labels' + suffixes[0])}.")
    for other in inputs:
        if other is not None and _same_file(path, Path(other)):
            raise InputFileError(f"{what[0].upper() + what[1:]}, {path}, is also a file this command reads or writes "
                                 f"({other}): it would be overwritten; give another name.")
    folder = path.parent if str(path.parent) else Path(".")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputFileError(f"Cannot write {path}: {existing} is a file, not a folder.")
    try:  # permissions, read-only disks and special file systems: ask the folder itself
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".samkit-write-check-"):
            pass
    except OSError as error:
        raise InputFileError(f"Cannot write {path}: {existing} does not take new files ({error.strerror}); give an "
                             "output in a folder of yours.") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise InputFileError(f"Cannot write {path}: the file is read-only; give another name.")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a label image as a compressed TIFF (smallest unsigned dtype that fits).

    The file is written to a temporary name and renamed, so a failed write never
    leaves a half-written label image under ``path``.
    """
    import tifffile

    path = check_output_path(path, "the label image", LABEL_SUFFIXES)
    if path.suffix.lower() == ".zarr":
        sink = LabelSink(path, np.shape(labels))
        sink.array[...] = np.asarray(labels)
        return sink.publish()
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    data = labels.astype(label_dtype(int(labels.max(initial=0))), copy=False)
    tiles = {"tile": (512, 512)} if data.ndim == 2 and data.size > TILED_TIFF_PIXELS else {}
    return write_atomically(path, lambda part: tifffile.imwrite(part, data, compression="zlib", **tiles))


#: Label images with more pixels than this are written as tiled TIFFs (read window by window).
TILED_TIFF_PIXELS = 4096 * 4096
#: Side of the chunks of zarr label images.
ZARR_CHUNK = 1024


class LabelSink:
    """Where a label image is painted, then published under its name at once.

    ``.tif``: a numpy array, written as a TIFF by :meth:`publish`. ``.zarr``: a
    zarr array in a temporary folder beside ``path``, written as it is painted (the
    labels never need to fit in memory) and renamed to ``path`` by :meth:`publish`.
    A sink that is not published leaves nothing under ``path`` (:meth:`discard`).

    Attributes:
        array: ``H x W`` uint32 (numpy or zarr), all 0 at first.
    """

    def __init__(self, path: str | os.PathLike, shape) -> None:
        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.zarr = self.path.suffix.lower() == ".zarr"
        self._part = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        if self.zarr:
            import shutil

            import zarr

            shutil.rmtree(self._part, ignore_errors=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            chunks = tuple(min(ZARR_CHUNK, s) for s in self.shape)
            self.array = zarr.create_array(str(self._part), shape=self.shape, chunks=chunks, dtype="uint32",
                                           fill_value=0)
        else:
            self.array = np.zeros(self.shape, np.uint32)

    def publish(self) -> Path:
        """Put the labels under ``path`` (replacing what was there), atomically."""
        if not self.zarr:
            return write_labels(self.path, self.array)
        import shutil

        old = self.path.with_name(f".{self.path.name}.{os.getpid()}.old")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self._part, self.path)
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    def discard(self) -> None:
        """Remove what was painted (nothing is left under ``path``)."""
        if self.zarr:
            import shutil

            shutil.rmtree(self._part, ignore_errors=True)


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise InputFileError(f"CSV file {path} does not exist.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error):
        raise InputFileError(f"{path} is not a text CSV file (rows of comma-separated numbers); give the CSV "
                             "file, not an image or other binary file.") from None
    if not rows:
        raise InputFileError(f"CSV file {path} is empty.")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_table(path: Path, min_columns: int, max_columns: int, what: str,
                   rows: list[list[str]] | None = None) -> np.ndarray:
    rows = _rows(path) if rows is None else rows
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


_BOXES = "boxes (x0,y0,x1,y1)"


def read_boxes_csv(path: str | os.PathLike) -> np.ndarray:
    """Boxes ``N x 4`` (x0, y0, x1, y1) from a CSV file; a header row is optional."""
    return _numeric_table(Path(path), 4, 4, _BOXES)


def read_plane_boxes_csv(path: str | os.PathLike,
                         plane_axis: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Boxes of a stack: rows ``x0,y0,x1,y1``, or ``p,x0,y0,x1,y1`` with a plane column first.

    The plane column is recognised by a header naming the axis (``z`` or ``t``, or
    ``plane``) or by five columns. Returns ``(planes N or None, boxes N x 4)``;
    ``None``: the boxes apply to every plane.
    """
    path = Path(path)
    rows = _rows(path)
    header = [cell.strip().lower() for cell in rows[0]] if not any(_is_number(c) for c in rows[0]) else None
    five = len(rows[-1]) == 5 or (header is not None and header[0] in ("z", "t", "plane"))
    if not five:
        return None, _numeric_table(path, 4, 4, _BOXES, rows)
    if header is not None and plane_axis is not None and header[0] in ("z", "t") and header[0] != plane_axis.lower():
        raise InputFileError(f"{path}: the plane column is {header[0]!r} but the stack is segmented through "
                             f"{plane_axis.upper()}; rename the column or give --through {header[0].upper()}.")
    table = _numeric_table(path, 5, 5, "boxes with a plane column (p,x0,y0,x1,y1)", rows)
    planes = table[:, 0]
    if (planes != np.round(planes)).any() or (planes < 0).any():
        raise InputFileError(f"{path}: the plane column must hold whole plane numbers from 0.")
    return planes.astype(np.int64), table[:, 1:]


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
    """Write an ``H x W`` or ``H x W x 3`` uint8 picture (PNG, JPEG or TIFF by the name's ending), atomically."""
    from PIL import Image

    path = check_output_path(path, "the picture", PICTURE_SUFFIXES)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_format = _PIL_FORMATS[path.suffix.lower()]
    return write_atomically(path, lambda part: Image.fromarray(picture).save(part, format=file_format))


_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
