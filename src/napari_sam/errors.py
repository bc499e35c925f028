"""Errors a person can act on.

Every error raised on purpose by napari-samkit derives from :class:`SamkitError`
and its message says what was wrong and what to do about it. The command line
prints the message (never a traceback) and exits with :attr:`SamkitError.exit_code`.
"""

from __future__ import annotations


class SamkitError(Exception):
    """Base class of the errors napari-samkit raises on purpose."""

    exit_code = 1


class Cancelled(Exception):
    """Raised by long computations (embeddings, generators) when their ``cancel`` callback said so.

    Not an error: nothing was wrong, the person asked to stop.
    """


class SettingsError(SamkitError, ValueError):
    """A setting (an option, an environment variable) with a value napari-samkit does not take.

    Also a :class:`ValueError`, as Python code that passes a wrong value expects.
    """

    exit_code = 2


class CheckpointError(SamkitError):
    """A checkpoint file is missing, broken, or of an unexpected architecture."""

    exit_code = 3


class UnknownModelError(SamkitError):
    """A model name that is neither in the registry nor a file."""

    exit_code = 3


class DownloadError(SamkitError):
    """A checkpoint could not be downloaded or failed verification."""

    exit_code = 4


class ImageError(SamkitError):
    """An image that cannot be segmented as given (shape, dtype, channels)."""

    exit_code = 2


class PromptError(SamkitError):
    """Prompts (points, boxes, masks) that do not fit the image or the model."""

    exit_code = 2


class InputFileError(SamkitError):
    """An input file (image, CSV, labels) that cannot be read."""

    exit_code = 2


class TrainingError(SamkitError):
    """Training data or settings that cannot train a model (no objects, mismatched pairs)."""

    exit_code = 2


class StoreError(SamkitError):
    """An embedding store that cannot be used: not a store, or unreadable."""

    exit_code = 2


class StoreMismatchError(StoreError):
    """An embedding store made for another image, model, precision or version."""

    exit_code = 2
