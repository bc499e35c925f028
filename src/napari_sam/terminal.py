"""Progress of a long command on the terminal: a tqdm bar, or a few plain lines in logs.

:class:`TerminalCounter` is a ``progress(done, total)`` callback, as every long
function of the core takes. On a terminal it draws a tqdm bar; when stderr is not
a terminal (CI, a log file, a pipe) it prints one line at each quarter instead of
carriage returns that run together.
"""

from __future__ import annotations

import sys


class TerminalCounter:
    """``progress(done, total)`` on stderr, labelled ``what`` (e.g. ``"boxes"``).

    Args:
        what: what is counted, shown before the numbers.
        unit: tqdm's unit (``"B"`` for bytes: scaled to kB, MB).
        stream: where to write (default: stderr).
    """

    def __init__(self, what: str, unit: str = "it", stream=None) -> None:
        self.what = what
        self.unit = unit
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        self._quarter = -1

    def __call__(self, done: float, total: float | None = None) -> None:
        if self.interactive:
            self._draw(done, total)
            return
        if total:
            quarter = int(4 * min(done / total, 1.0))
            if quarter > self._quarter:
                self._quarter = quarter
                print(f"{self.what}: {_number(done)}/{_number(total)} ({25 * quarter}%)", file=self.stream,
                      flush=True)

    def _draw(self, done: float, total: float | None) -> None:
        if self._bar is None:
            from tqdm import tqdm

            scale = self.unit == "B"
            self._bar = tqdm(total=total, desc=self.what, unit=self.unit, unit_scale=scale, file=self.stream,
                             leave=True, dynamic_ncols=True)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.n = done if float(done).is_integer() else round(float(done), 1)
        self._bar.refresh()
        if total and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _number(value: float) -> str:
    """A count for people: whole numbers as they are, fractions (work inside an item) to one decimal."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.1f}"
    return str(int(value))


class BatchReporter:
    """``report(record, done, total)`` of a batch (:func:`napari_sam.batch.segment_images`) on stderr.

    On a terminal a tqdm bar counts images with their rate and the time left; in a
    log (stderr not a terminal) each image gets one line:
    ``[3/50] plate1/cells_017.tif: segmented, 42 objects, 3.1 s``.
    """

    def __init__(self, quiet: bool = False, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None

    def __call__(self, record, done: int, total: int) -> None:
        if self.quiet:
            return
        if not self.interactive:
            print(f"[{done}/{total}] {record.path}: {describe_record(record)}", file=self.stream, flush=True)
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="images", unit="image", file=self.stream, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)
        self._bar.set_postfix_str(f"{record.path.rsplit('/', 1)[-1]}: {record.status}", refresh=True)
        if record.status == "failed":
            self._bar.write(f"failed: {record.path}: {record.error}", file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def describe_record(record) -> str:
    """``"segmented, 42 objects, 3.1 s"``; a failure with its reason."""
    if record.status == "failed":
        return f"failed: {record.error}"
    parts = [record.status]
    if record.objects is not None:
        parts.append(f"{record.objects} objects")
    if record.seconds is not None and record.status != "skipped":
        parts.append(f"{record.seconds:.1f} s")
    return ", ".join(parts)
