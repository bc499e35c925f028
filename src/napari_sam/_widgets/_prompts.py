"""The annotator's prompt layers: 'SAM points' (positive / negative clicks) and 'SAM boxes'.

Owns both layers: creates them in the image's frame, keeps point colours in step
with their ``label`` feature, handles the negative-click modifier, and turns the
prompts of one plane into the core's objects.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..annotation import ObjectPrompt, PlaneGeometry, boxes_on_plane, group_prompts, points_on_plane
from ..errors import PromptError
from . import _layers as L

_QUIET_ACTIONS = ("adding", "removing")  # layer data events that announce a change to come


class PromptLayers:
    """Points and boxes layers of one annotator.

    Args:
        viewer: the napari viewer.
        on_change: called with the layer event after every completed change.
        on_toggle: called when the toggle key is pressed in the points layer.
        toggle_key: the key bound on the points layer to toggle the next label.
    """

    def __init__(self, viewer, on_change: Callable, on_toggle: Callable, toggle_key: str) -> None:
        self.viewer = viewer
        self.on_change = on_change
        self.on_toggle = on_toggle
        self.toggle_key = toggle_key
        self.points = self.boxes = None
        self.next_label = L.POSITIVE
        self._negative_click = False

    def ensure(self, frame: L.ImageFrame) -> None:
        """Make (or reuse) both layers for ``frame`` and empty them."""
        if not L.matches(self.points, self.viewer, frame.ndim):
            L.discard(self.viewer, self.points)
            self.points = L.make_points_layer(self.viewer, frame)
            self.points.events.data.connect(self._on_points_changed)
            self.points.bind_key(self.toggle_key, lambda _layer: self.on_toggle(), overwrite=True)
            self.points.mouse_drag_callbacks.insert(0, self._mark_negative_click)
        if not L.matches(self.boxes, self.viewer, frame.ndim):
            L.discard(self.viewer, self.boxes)
            self.boxes = L.make_boxes_layer(self.viewer, frame)
            self.boxes.events.data.connect(self._on_boxes_changed)
        for layer in (self.points, self.boxes):
            layer.scale, layer.translate = frame.scale, frame.translate
        self.points.data = np.zeros((0, frame.ndim))
        self.boxes.data = []

    def set_next_label(self, label: str) -> None:
        self.next_label = label
        if self.points is not None:
            # napari applies the current colour to the selected points (the last one added
            # is selected): unselect first, so existing points keep their colour and label
            self.points.selected_data = set()
            self.points.feature_defaults = {"label": label}
            self.points.current_face_color = L.POINT_COLORS[label]

    # ------------------------------------------------------------------ events

    def _mark_negative_click(self, layer, event):
        """Mouse callback on the points layer: Ctrl+click or right click adds a negative point."""
        if layer.mode == "add" and ("Control" in event.modifiers or event.button == 2):
            self._negative_click = True
        yield
        while event.type == "mouse_move":
            yield
        from qtpy.QtCore import QTimer  # napari's add runs right after this release step

        QTimer.singleShot(0, lambda: setattr(self, "_negative_click", False))

    def _on_points_changed(self, event) -> None:
        action = str(event.action)
        if action in _QUIET_ACTIONS:
            return
        layer = self.points
        if self._negative_click and action == "added":
            layer.features.loc[layer.features.index[-1], "label"] = L.NEGATIVE
            self._negative_click = False
        colors = L.point_colors(self.point_labels())
        if len(colors) and not np.allclose(layer.face_color, colors):
            layer.face_color = colors
        if layer.feature_defaults["label"].iloc[0] != self.next_label:
            layer.feature_defaults = {"label": self.next_label}
        self.on_change(event)

    def _on_boxes_changed(self, event) -> None:
        if str(event.action) not in _QUIET_ACTIONS:
            self.on_change(event)

    # ------------------------------------------------------------------ reading

    def point_labels(self) -> np.ndarray:
        """``"positive"`` / ``"negative"`` for every point of the layer."""
        if self.points is None or not len(self.points.data):
            return np.zeros(0, object)
        return self.points.features["label"].to_numpy()

    def objects(self, geometry: PlaneGeometry) -> list[ObjectPrompt]:
        """The prompts on the plane of ``geometry``, grouped into objects."""
        point_rows, points_xy = points_on_plane(self.points.data, geometry)
        positive = (self.point_labels()[point_rows] != L.NEGATIVE).astype(np.int64)
        box_rows, boxes_xy = boxes_on_plane(self.boxes.data, geometry)
        return group_prompts(points_xy, positive, boxes_xy, point_rows, box_rows)

    # ------------------------------------------------------------------ writing

    def add_points(self, geometry: PlaneGeometry, coords, positive: bool = True) -> None:
        """Add ``N x 2`` ``(row, col)`` points on the plane (or ``N x D`` image coordinates)."""
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        if coords.shape[1] == 2 and geometry.ndim > 2:
            full = np.tile(np.asarray(geometry.position, np.float64), (len(coords), 1))
            full[:, list(geometry.displayed)] = coords
            coords = full
        if coords.shape[1] != geometry.ndim:
            raise PromptError(f"Points need 2 (row, col) or {geometry.ndim} coordinates; got {coords.shape[1]}.")
        previous = self.next_label
        self.set_next_label(L.POSITIVE if positive else L.NEGATIVE)
        try:
            self.points.add(coords)
        finally:
            self.set_next_label(previous)

    def add_boxes(self, geometry: PlaneGeometry, boxes) -> None:
        """Add ``N x 4`` ``(row0, col0, row1, col1)`` boxes on the plane in one layer update."""
        boxes = np.atleast_2d(np.asarray(boxes, dtype=np.float64))
        if boxes.shape[1] != 4:
            raise PromptError(f"A box is (row0, col0, row1, col1); got an array of shape {boxes.shape}.")
        r0, c0, r1, c1 = boxes.T
        corners = np.stack([np.stack(pair, 1) for pair in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))], 1)
        full = np.broadcast_to(np.asarray(geometry.position, np.float64), (len(boxes), 4, geometry.ndim)).copy()
        full[..., list(geometry.displayed)] = corners
        self.boxes.add_rectangles(list(full))

    def remove(self, point_rows, box_rows) -> None:
        """Remove points and boxes by layer row, without a change event per layer."""
        with self.points.events.data.blocker(), self.boxes.events.data.blocker():
            L.remove_rows(self.points, point_rows)
            L.remove_rows(self.boxes, box_rows)

    def take(self, point_rows, box_rows) -> tuple:
        """Remove points and boxes (as :meth:`remove`) and return them for :meth:`put_back`."""
        point_rows = np.asarray(point_rows, dtype=np.int64)
        taken = (self.points.data[point_rows].copy(), self.point_labels()[point_rows].copy(),
                 [np.array(self.boxes.data[i]) for i in box_rows])
        self.remove(point_rows, box_rows)
        return taken

    def put_back(self, taken: tuple) -> None:
        """Add prompts returned by :meth:`take` again (their points keep their labels)."""
        coords, labels, boxes = taken
        if len(coords):
            previous = self.next_label
            try:
                for label in (L.POSITIVE, L.NEGATIVE):
                    chosen = labels == label
                    if chosen.any():
                        self.set_next_label(label)
                        self.points.add(coords[chosen])
            finally:
                self.set_next_label(previous)
        if boxes:
            self.boxes.add_rectangles(boxes)

    def missing(self) -> bool:
        """True if the user deleted the points or the boxes layer from the viewer."""
        return any(layer is not None and layer not in self.viewer.layers for layer in (self.points, self.boxes))

    def clear_plane(self, geometry: PlaneGeometry) -> None:
        """Remove every point and box on the plane of ``geometry``."""
        point_rows, _ = points_on_plane(self.points.data, geometry)
        box_rows = [i for i, v in enumerate(self.boxes.data) if geometry.in_plane(v).all()]
        self.remove(point_rows, box_rows)
