"""Errors as messages a person can act on, shown as napari notifications."""

from __future__ import annotations

import functools

from ..errors import SamkitError


def error_message(error: BaseException, what: str) -> str:
    """A message for any exception raised while doing ``what`` (e.g. "computing the embedding")."""
    if isinstance(error, SamkitError):
        return str(error)
    text = str(error)
    if isinstance(error, MemoryError) or "out of memory" in text.lower():
        return (f"Out of memory while {what}. Close other programs, choose the smaller lite_medsam model, "
                "or crop / downsample the image.")
    return f"Unexpected error while {what}: {type(error).__name__}: {text}"


def notify_errors(what: str):
    """Decorator for GUI entry points of a widget with a ``_report(message)`` method:
    exceptions become notifications instead of tracebacks."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - shown to the person instead
                self._report(error_message(error, what))
                return None

        return wrapper

    return decorate
