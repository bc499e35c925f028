"""Fine-tuning progress on a terminal: a tqdm bar on a terminal, one line per epoch in logs."""

from __future__ import annotations

import sys

from .trainer import TrainingProgress


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class TerminalProgress:
    """A progress callback for :func:`~napari_sam.training.fine_tune` that writes to stderr.

    On a terminal: a tqdm bar over the steps of each epoch, with the running loss
    and the time left; when stderr is not a terminal (CI, log files): one line per
    epoch. Epoch summaries (validation IoU) are printed in both cases.
    """

    def __init__(self, quiet: bool = False, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        self._bar_epoch = None

    def __call__(self, event: TrainingProgress) -> None:
        if self.quiet:
            return
        if event.stage == "training" and self.interactive:
            if self._bar is None or self._bar_epoch != event.epoch:
                self.close()
                from tqdm import tqdm

                self._bar = tqdm(total=event.steps, desc=f"epoch {event.epoch}/{event.epochs}", file=self.stream,
                                 unit="step", leave=False)
                self._bar_epoch = event.epoch
            self._bar.n = event.step
            self._bar.set_postfix_str(f"loss {event.loss:.4f}, all done in {_duration(event.seconds_left)}")
        elif event.stage in ("epoch", "done"):
            self.close()
            left = f" ({_duration(event.seconds_left)} left at most)" if event.stage == "epoch" and \
                event.seconds_left else ""
            print(event.message + left, file=self.stream, flush=True)
        elif event.stage == "embedding" and (event.step == event.steps or self.interactive):
            end = "\n" if event.step == event.steps or not self.interactive else "\r"
            print(event.message, end=end, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
