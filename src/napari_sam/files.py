"""Finding image files: inputs named by files, globs, folders or list files, and the files beside them.

One place decides which files are images, which are label images next to them
(``cells_01.tif`` and ``cells_01_labels.tif``), and where an output goes when a
batch mirrors its inputs into an output folder. Used by ``samkit segment`` with
many inputs, by training (images and their labels) and by the image-series annotator.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import InputFileError

#: Suffixes of the image files looked for in folders.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: Name endings that mark a label image beside its image (``cells_01_labels.tif``).
LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_seg", "_gt")
#: Suffix of the list files whose lines name inputs (one path, glob or folder per line).
LIST_SUFFIXES = (".txt", ".lst")
#: What a batch appends to an input's name for its label image: ``cells_017.tif`` -> ``cells_017_labels.tif``.
OUTPUT_SUFFIX = "_labels.tif"


def is_label_name(path: Path) -> bool:
    """True for names such as ``x_labels.tif`` or ``x_mask.png``: label images, not inputs."""
    return any(path.stem.endswith(s) for s in LABEL_SUFFIXES)


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted, label images and hidden files left out)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_label_name(p) and not p.name.startswith(".")
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputFileError(f"Cannot read the list of inputs {path}: {error}") from None
    base = path.parent
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):  # relative lines are relative to the list file
            out.append(line if os.path.isabs(os.path.expanduser(line)) else str(base / line))
    return out


def expand_inputs(items: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Files named by ``items``, in order, each once.

    Args:
        items: files, globs (``"plate1/*.tif"``), folders (every image inside, sorted)
            and list files (``.txt``: one file, glob or folder per line; ``#`` comments).
        recursive: folders include the images of their sub-folders.

    Raises:
        InputFileError: a glob or folder that names no image (a missing file is returned
            as it is: reading it raises the error, so a batch reports it and goes on).
    """
    todo = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    out: list[Path] = []
    seen: set[Path] = set()

    def add(paths: Iterable[Path]) -> None:
        for p in paths:
            resolved = p.resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append(p)

    for item in todo:
        text = os.path.expanduser(os.fspath(item))
        path = Path(text)
        if path.is_dir():
            found = images_in(path, recursive)
            if not found:
                raise InputFileError(f"Folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})"
                                     + ("" if recursive else "; add --recursive to look in its sub-folders") + ".")
            add(found)
        elif _is_glob(text):
            found = [Path(p) for p in sorted(glob.glob(text, recursive=recursive)) if Path(p).is_file()]
            if not found:
                raise InputFileError(f"No file matches {text!r}.")
            add(found)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            add(expand_inputs(_read_list(path), recursive))
        else:  # a missing file is kept: reading it says so, and a batch goes on with the others
            add([path])
    return out


def beside(image: Path, folder: Path, suffixes: Sequence[str] = LABEL_SUFFIXES, same_name: bool = True,
           extensions: Sequence[str] | None = None) -> Path | None:
    """The file in ``folder`` named after ``image``: ``<stem><suffix>.*`` (or ``<stem>.*`` when ``same_name``).

    Used to find an image's label image (``cell.tif`` -> ``cell_labels.tif``) or its
    prompts (``cell.csv``, ``cell_boxes.csv``). Returns None when there is none.
    """
    if not folder.is_dir():
        return None
    wanted = {image.stem + s for s in suffixes} | ({image.stem} if same_name else set())
    for candidate in sorted(folder.iterdir()):
        if (candidate.is_file() and candidate.stem in wanted and candidate.resolve() != image.resolve()
                and (extensions is None or candidate.suffix.lower() in extensions)):
            return candidate
    return None


def common_root(paths: Sequence[Path]) -> Path:
    """The deepest folder that holds every path (the base that output names mirror)."""
    if not paths:
        return Path(".")
    parents = [str(p.resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents))


def mirrored_output(image: Path, root: Path, output_dir: Path, suffix: str = OUTPUT_SUFFIX) -> Path:
    """Where a batch writes ``image``'s output: its path under ``root`` mirrored in ``output_dir``.

    ``root/plate1/cells_017.tif`` -> ``output_dir/plate1/cells_017_labels.tif``.
    """
    relative = image.resolve().relative_to(root)
    return output_dir / relative.parent / (relative.stem + suffix)
