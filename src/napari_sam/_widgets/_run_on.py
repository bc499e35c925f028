"""Where the automatic widget's runs go: this process, a local Dask cluster, or a Dask scheduler.

One control for both of the widget's runs: the layer run (a stack's planes become
Dask tasks, see :func:`napari_sam.automatic.planes.segment_stack`) and the Folder
section (its images become Dask tasks, see :func:`napari_sam.batch.segment_images`).
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, LineEdit, SpinBox

#: Where a run goes: key -> what people read.
WHERE = {"here": "this machine (one process)", "local": "local Dask cluster", "address": "Dask scheduler at address"}


class RunOn:
    """A choice of :data:`WHERE`, with the local cluster's size or the scheduler's address.

    Its :attr:`widgets` go into the owning widget's own form (aligned with its fields).
    """

    def __init__(self) -> None:
        self.where = ComboBox(label="Run on", choices=[(text, key) for key, text in WHERE.items()], value="here",
                              tooltip="Where runs go. A local Dask cluster starts worker processes for the run; a "
                                      "scheduler address (tcp://host:8786) sends the work to that cluster. A stack's "
                                      "planes, or a folder's images, are the Dask tasks (a layer's pixels are sent to "
                                      "the workers; a folder's workers must see both folders).")
        self.workers = SpinBox(label="Workers", value=2, min=1, max=64,
                               tooltip="Worker processes of the local cluster.")
        self.address = LineEdit(label="Scheduler", value="", tooltip="The Dask scheduler's address, e.g. "
                                                                   "tcp://10.0.0.5:8786.")
        self.widgets = [self.where, self.workers, self.address]
        self.where.changed.connect(self._update_visibility)
        self._update_visibility()

    def _update_visibility(self, *_) -> None:
        self.workers.visible = self.where.value == "local"
        self.address.visible = self.where.value == "address"

    @property
    def text(self) -> str:
        return WHERE[self.where.value]

    def problem(self) -> str | None:
        """What is missing for a run (None: nothing)."""
        if self.where.value == "address" and not self.address.value.strip():
            return "Give the Dask scheduler's address (e.g. tcp://host:8786), or run on this machine."
        return None

    def dask(self) -> dict | None:
        """``{"workers": N}`` or ``{"address": ...}`` for :func:`napari_sam.cluster.connect`; None: this process."""
        if self.where.value == "local":
            return {"workers": self.workers.value}
        if self.where.value == "address":
            return {"address": self.address.value.strip()}
        return None
