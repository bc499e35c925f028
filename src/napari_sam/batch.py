"""Many images, one command: batch segmentation that resumes, reports and goes on past bad images.

:func:`plan_batch` turns inputs (files, globs, folders, list files) into one
:class:`~napari_sam.image_task.ImageTask` per image, its output mirrored under the
output folder (``plate1/cells_017.tif`` -> ``OUT/plate1/cells_017_labels.tif``) and
its prompts found beside it. :func:`segment_images` runs them:

* **resumable**: every output is written atomically and the label image last, so
  an image whose label image exists is done and skipped (unless ``overwrite``);
  after Ctrl-C, a crash or a killed job the same call does only what is left;
* **robust**: an image that cannot be segmented (unreadable, wrong shape, bad
  prompts, out of memory) is recorded with its reason and the batch goes on;
* **reported**: a summary table (:data:`SUMMARY_COLUMNS`) is rewritten next to the
  outputs after every image, and ``report(record, done, total)`` hears of each;
* **fast**: the model is loaded once and the next image is read while the
  current one is segmented; with a Dask ``client`` (or ``workers``) images are
  tasks on a cluster (:mod:`napari_sam.cluster`).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Cancelled, InputFileError, SamkitError
from .files import OUTPUT_SUFFIX, beside, common_root, expand_inputs, mirrored_output
from .image_task import ImageTask, SegmentSettings, label_figures, read_inputs, segment_file

#: The summary table's file name in the output folder.
SUMMARY_NAME = "samkit_summary.csv"
#: Its columns, one row per input image.
SUMMARY_COLUMNS = ("path", "output", "objects", "mean_area", "seconds", "status", "error")
#: Statuses of an image in the summary.
SEGMENTED, SKIPPED, FAILED, NOT_RUN = "segmented", "skipped", "failed", "not run"
#: Where a batch looks for an image's prompt files in a folder given as --boxes / --points / --labels.
PROMPT_NAMES = {"boxes": ("_boxes",), "points": ("_points",), "labels": ("_labels", "_label", "_masks", "_mask")}
#: Overlay picture suffix in a batch: ``cells_017.tif`` -> ``cells_017_overlay.png``.
OVERLAY_SUFFIX = "_overlay.png"


@dataclass
class ImageRecord:
    """One row of the summary: what happened to one input image."""

    path: str
    output: str
    status: str
    objects: int | None = None
    mean_area: float | None = None
    seconds: float | None = None
    error: str = ""

    def row(self) -> list[str]:
        return [self.path, self.output, "" if self.objects is None else str(self.objects),
                "" if self.mean_area is None else f"{self.mean_area:.1f}",
                "" if self.seconds is None else f"{self.seconds:.2f}", self.status, self.error]


@dataclass
class BatchSummary:
    """The records of a batch, in input order, and where the summary table is."""

    records: list[ImageRecord]
    table: Path
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == FAILED]

    @property
    def complete(self) -> bool:
        """True when every image has its label image (segmented now or before)."""
        return all(r.status in (SEGMENTED, SKIPPED) for r in self.records)

    def line(self) -> str:
        parts = [f"{self.count(SEGMENTED)} segmented", f"{self.count(SKIPPED)} already done"]
        if self.count(FAILED):
            parts.append(f"{self.count(FAILED)} failed")
        if self.count(NOT_RUN):
            parts.append(f"{self.count(NOT_RUN)} not run")
        return f"{len(self.records)} images: " + ", ".join(parts) + f" in {self.seconds:.1f} s; summary {self.table}"


def _prompt_file(image: Path, given: Path | None, what: str) -> Path | None:
    """The prompt file of ``image``: ``given`` itself (the same for every image) or found in folder ``given``."""
    if given is None or not given.is_dir():
        return given
    found = beside(image, given, PROMPT_NAMES[what], same_name=True,
                   extensions=(".csv",) if what != "labels" else (".tif", ".tiff", ".png"))
    if found is None:
        raise InputFileError(f"No {what} file for {image.name} in {given} (looked for {image.stem}.* and "
                             f"{image.stem}{{{','.join(PROMPT_NAMES[what])}}}.*).")
    return found


def plan_batch(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    recursive: bool = False,
    boxes: str | os.PathLike | None = None,
    points: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    overlay: bool = False,
    store: str | os.PathLike | None = None,
) -> tuple[list[ImageTask], list[ImageRecord]]:
    """One task per input image, and a failed record for each image whose prompts are missing.

    Args:
        inputs: files, globs, folders or ``.txt`` list files (:func:`napari_sam.files.expand_inputs`).
        output_dir: where outputs go, mirroring the inputs' folders below their common folder.
        boxes, points, labels: a file used for every image, or a folder holding each
            image's own (``cells_017.csv`` or ``cells_017_boxes.csv``; labels
            ``cells_017_labels.tif`` or ``cells_017.tif``).
        overlay: also write ``<name>_overlay.png`` pictures.
        store: a folder of embedding stores, one per image.

    Raises:
        InputFileError: no image at all, or two inputs whose outputs would be the same file.
    """
    images = expand_inputs(inputs, recursive=recursive)
    if not images:
        raise InputFileError(f"No image files in {inputs!r}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputFileError(f"With several images -o names a folder, and {output_dir} is a file: give a folder.")
    root = common_root(images)
    prompts = {"boxes": boxes, "points": points, "labels": labels}
    prompts = {k: Path(v) if v is not None else None for k, v in prompts.items()}
    tasks, failed, outputs = [], [], {}
    for image in images:
        output = mirrored_output(image, root, output_dir)
        if output in outputs:
            raise InputFileError(f"{image} and {outputs[output]} would both be written to {output}: rename one, or "
                                 "segment them into different folders.")
        outputs[output] = image
        if not image.is_file():
            failed.append(ImageRecord(str(image), str(output), FAILED, error=f"Image file {image} does not exist."))
            continue
        try:
            found = {k: _prompt_file(image, v, k) for k, v in prompts.items()}
        except InputFileError as error:
            failed.append(ImageRecord(str(image), str(output), FAILED, error=str(error)))
            continue
        if found["labels"] is not None and found["labels"].resolve() == output.resolve():
            failed.append(ImageRecord(str(image), str(output), FAILED,
                                      error=f"its rough labels {found['labels']} are its own output: give -o another "
                                            "folder."))
            continue
        tasks.append(ImageTask(image, output, boxes=found["boxes"], points=found["points"], labels=found["labels"],
                               overlay=output.with_name(output.name[: -len(OUTPUT_SUFFIX)] + OVERLAY_SUFFIX)
                               if overlay else None,
                               store=Path(store) if store else None, store_is_folder=True))
    return tasks, failed


def _previous_rows(table: Path) -> dict[str, dict]:
    """Rows of an earlier summary, by image path (to report images done by an earlier run)."""
    try:
        with open(table, newline="") as handle:
            return {row["path"]: row for row in csv.DictReader(handle) if row.get("path")}
    except (OSError, ValueError, KeyError, csv.Error):
        return {}


def _done_record(task: ImageTask, previous: dict[str, dict]) -> ImageRecord:
    """The record of an image whose label image already exists."""
    row = previous.get(str(task.image), {})
    if row.get("status") in (SEGMENTED, SKIPPED) and row.get("objects"):
        objects, area = int(row["objects"]), float(row["mean_area"] or 0)
        seconds = float(row["seconds"]) if row.get("seconds") else None
    else:
        from .io import read_image

        try:
            objects, area = label_figures(read_image(task.output))
        except SamkitError:
            objects, area = None, None
        seconds = None
    return ImageRecord(str(task.image), str(task.output), SKIPPED, objects, area, seconds)


def write_summary(table: Path, records: Sequence[ImageRecord]) -> Path:
    """Write the summary table atomically (a reader never sees half a table)."""
    from .io import write_atomically

    def write(part: Path) -> None:
        with open(part, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(SUMMARY_COLUMNS)
            writer.writerows(r.row() for r in records)

    table.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(table, write)


def remove_stale_parts(tasks: Sequence[ImageTask]) -> int:
    """Remove the temporary files a killed run left beside its outputs (``.name.PID.part``)."""
    removed = 0
    for task in tasks:
        folder = task.output.parent
        if not folder.is_dir():
            continue
        for name in (task.output.name, task.tracks.name) + ((task.overlay.name,) if task.overlay else ()):
            for part in folder.glob(f".{name}.*.part"):
                try:
                    part.unlink()
                    removed += 1
                except OSError:
                    pass
    return removed


def failure_message(error: BaseException) -> str:
    """One line for the summary: the message of our errors, the kind of anything else."""
    if isinstance(error, SamkitError):
        return str(error)
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return "out of memory: try a smaller image or --precision bfloat16"
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return f"unexpected {type(error).__name__}: {first} (a bug: rerun this image alone with --debug and report it)"


def run_task(task: ImageTask, settings: SegmentSettings, model, inputs=None, cancel=None) -> ImageRecord:
    """Segment one task; an error becomes a failed record (the batch goes on). Ctrl-C and a cancel are not caught."""
    started = time.perf_counter()
    try:
        result = segment_file(task, settings, model, inputs=inputs, cancel=cancel)
    except Cancelled:
        raise
    except (Exception, MemoryError) as error:  # noqa: BLE001 - one bad image must not stop the batch
        return ImageRecord(str(task.image), str(task.output), FAILED, seconds=time.perf_counter() - started,
                           error=failure_message(error))
    return ImageRecord(str(task.image), str(task.output), SEGMENTED, result.objects, result.mean_area,
                       result.seconds)


def _read_ahead(task: ImageTask, settings: SegmentSettings):
    """Inputs of ``task``, or the error reading them raised (handed to the loop, not raised in the thread)."""
    try:
        return read_inputs(task, settings)
    except (Exception, MemoryError) as error:  # noqa: BLE001 - reported as that image's failure
        return error


def _run_serial(todo, settings, model, on_record, cancel) -> None:
    """Segment ``todo`` in order, reading the next image while the current one is segmented."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="samkit-read") as reader:
        pending = reader.submit(_read_ahead, todo[0], settings) if todo else None
        for i, task in enumerate(todo):
            if cancel is not None and cancel():
                raise Cancelled
            inputs = pending.result()
            pending = reader.submit(_read_ahead, todo[i + 1], settings) if i + 1 < len(todo) else None
            if isinstance(inputs, BaseException):
                on_record(ImageRecord(str(task.image), str(task.output), FAILED, error=failure_message(inputs)))
                continue
            on_record(run_task(task, settings, model, inputs, cancel))


def segment_images(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    settings: SegmentSettings | None = None,
    *,
    recursive: bool = False,
    boxes: str | os.PathLike | None = None,
    points: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    overlay: bool = False,
    store: str | os.PathLike | None = None,
    overwrite: bool = False,
    summary: str | os.PathLike | None = None,
    model=None,
    client=None,
    workers: int | None = None,
    threads: int | None = None,
    report: Callable[[ImageRecord, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> BatchSummary:
    """Segment every image named by ``inputs`` into ``output_dir``; see the module docstring.

    Args:
        settings: how each image is segmented (default: automatic with the default model).
        overwrite: segment images whose label image exists too.
        summary: the summary table (default ``output_dir/samkit_summary.csv``).
        model: a loaded model to use (serial runs; default: load ``settings.model`` once).
        client: a ``dask.distributed.Client``, or a scheduler address (``"tcp://host:8786"``):
            images become tasks on that cluster.
        workers: start a local Dask cluster of this many worker processes for the run.
        threads: torch threads per image (default: torch's own; on a local cluster
            the machine's cores divided among the workers).
        report: ``report(record, done, total)`` after each image (skipped ones included).
        cancel: polled between images and during each (serial runs); when it returns
            True the run stops (on Dask: after the images in flight), nothing half-done is
            written, and the images left are recorded as not run.

    Returns:
        The :class:`BatchSummary`; the table is written even when the run was cancelled
        (then :class:`~napari_sam.errors.Cancelled` is not raised: see ``summary.complete``).
    """
    started = time.perf_counter()
    settings = (settings or SegmentSettings()).check()
    output_dir = Path(output_dir)
    tasks, failed = plan_batch(inputs, output_dir, recursive=recursive, boxes=boxes, points=points, labels=labels,
                               overlay=overlay, store=store)
    table = Path(summary) if summary else output_dir / SUMMARY_NAME
    previous = _previous_rows(table)
    records: dict[str, ImageRecord] = {r.path: r for r in failed}
    order = [str(t.image) for t in tasks] + [r.path for r in failed]
    total = len(order)
    remove_stale_parts(tasks)

    def on_record(record: ImageRecord) -> None:
        records[record.path] = record
        write_summary(table, [records[p] for p in order if p in records])
        if report is not None:
            report(record, len(records), total)

    todo = []
    for task in tasks:
        if task.output.exists() and not overwrite:
            on_record(_done_record(task, previous))
        else:
            todo.append(task)
    for record in failed:  # reported once the planning is through
        if report is not None:
            report(record, len(records), total)
    write_summary(table, [records[p] for p in order if p in records])
    notes: list[str] = []
    try:
        if todo and (client is not None or workers):
            from .cluster import run_on_dask

            notes += run_on_dask(todo, settings, on_record, client=client, workers=workers, threads=threads,
                                 cancel=cancel)
        elif todo:
            if threads:
                import torch

                torch.set_num_threads(threads)
            if model is None:
                from .loading import load_model

                model = load_model(settings.model, model_type=settings.model_type, device=settings.device)
            _run_serial(todo, settings, model, on_record, cancel)
    except (Cancelled, KeyboardInterrupt) as stop:
        for task in todo:
            records.setdefault(str(task.image), ImageRecord(str(task.image), str(task.output), NOT_RUN))
        write_summary(table, [records[p] for p in order])
        if isinstance(stop, KeyboardInterrupt):
            raise
    result = BatchSummary([records[p] for p in order], table, time.perf_counter() - started, notes)
    write_summary(table, result.records)
    return result
