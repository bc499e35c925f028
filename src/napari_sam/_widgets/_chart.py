"""A small line chart for the fine-tune widget (plain Qt painting: no plotting library needed)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Series name -> colour; IoU series are drawn on a fixed 0-1 scale, the loss on its own.
SERIES_COLOURS = {"loss": "#e0a030", "box_iou": "#40a0ff", "click_iou": "#60d060"}
SERIES_TEXT = {"loss": "training loss", "box_iou": "validation IoU, box", "click_iou": "validation IoU, one click"}


class TrainingChart(QWidget):
    """Training loss and validation IoU per epoch, redrawn whenever :meth:`set_history` is called."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.history: list[dict] = []
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_history(self, history: list[dict]) -> None:
        self.history = list(history)
        self.update()

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(epoch, value)`` points of one series (NaN values left out)."""
        return [(h["epoch"], float(h[name])) for h in self.history
                if name in h and h[name] is not None and math.isfinite(float(h[name]))]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width, height = self.width(), self.height()
        left, right, top, bottom = 8, 8, 8, 44  # two legend rows below the plot
        plot_w, plot_h = max(1, width - left - right), max(1, height - top - bottom)
        painter.setPen(QPen(QColor("#808080"), 1))
        painter.drawRect(left, top, plot_w, plot_h)
        epochs = [h["epoch"] for h in self.history] or [0, 1]
        first, last = min(epochs), max(max(epochs), min(epochs) + 1)
        losses = [v for _, v in self.series("loss")]
        loss_top = max(losses) * 1.1 if losses else 1.0

        def to_point(epoch: float, value: float, scale_top: float) -> QPointF:
            x = left + plot_w * (epoch - first) / (last - first)
            y = top + plot_h * (1.0 - min(max(value / scale_top, 0.0), 1.0))
            return QPointF(x, y)

        for name, colour in SERIES_COLOURS.items():
            points = self.series(name)
            if not points:
                continue
            scale_top = loss_top if name == "loss" else 1.0
            pen = QPen(QColor(colour), 2)
            painter.setPen(pen)
            polygon = QPolygonF([to_point(e, v, scale_top) for e, v in points])
            painter.drawPolyline(polygon)
            for point in polygon:
                painter.drawEllipse(point, 2.5, 2.5)
        x, row = left, height - bottom + 6  # the legend wraps onto a second row when narrow
        for name, colour in SERIES_COLOURS.items():
            text = SERIES_TEXT[name]
            values = self.series(name)
            if values:
                text += f" {values[-1][1]:.3f}"
            advance = 18 + painter.fontMetrics().horizontalAdvance(text)
            if x > left and x + advance > width - right:
                x, row = left, row + 18
            painter.setPen(QPen(QColor(colour), 2))
            painter.drawLine(x, row + 7, x + 14, row + 7)
            painter.setPen(QPen(self.palette().color(self.foregroundRole())))
            painter.drawText(x + 18, row, 400, 14, Qt.AlignmentFlag.AlignLeft, text)
            x += advance + 12
        painter.end()
