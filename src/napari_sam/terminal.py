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
        self._bar.n = done
        self._bar.refresh()
        if total and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else str(int(value))
