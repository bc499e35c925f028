"""Shared test set-up."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _no_thread_outlives_its_test():
    """Workers report 'finished' a moment before their thread returns to the pool:
    wait for Qt's pool (when a test used Qt), so no thread runs while pytest tears Qt down."""
    yield
    if "qtpy.QtCore" in sys.modules:
        from qtpy.QtCore import QThreadPool

        assert QThreadPool.globalInstance().waitForDone(300_000)


@pytest.fixture(scope="module")
def lite_medsam():
    """The embedded default model, loaded once per test module."""
    from napari_sam import load_model

    return load_model("lite_medsam")
