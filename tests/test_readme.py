"""The README's Python quick start runs as written, and gives what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


#: The quick start on the top row of coins (its boxes are there): the same code, a third of the time.
TOP_ROW = ("image = data.coins()\n", "image = data.coins()[:110]\n")


@pytest.mark.slow
def test_the_python_quick_start_runs_and_finds_the_coins():
    (quick_start,) = [block for block in python_blocks() if "import napari_sam" in block][:1]
    assert TOP_ROW[0] in quick_start
    quick_start = quick_start.replace(*TOP_ROW)
    namespace: dict = {}
    exec(compile(quick_start, str(README), "exec"), namespace)  # noqa: S102 - our own README
    image = namespace["image"]
    masks = namespace["masks"]
    assert masks.shape == (2, 1) + image.shape  # two boxes, as the comment says
    assert all(200 < m.sum() < 4000 for m in masks[:, 0])  # each box holds one coin
    records, labels = namespace["records"], namespace["labels"]
    assert len(records) >= 5  # the top row holds 7 coins
    rough = namespace["rough"]
    kept = set(np.unique(labels)) - {0}
    assert kept and kept <= set(np.unique(rough)) - {0}  # refined objects keep their rough ids
