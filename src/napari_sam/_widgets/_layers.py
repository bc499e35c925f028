"""napari side of the annotator: the layers it owns and the plane on screen.

Reads viewer state into the core's :class:`~napari_sam.annotation.PlaneGeometry` and
makes the prompt, preview and label layers, all in the image's spatial data frame
(same scale and translate), so layer data coordinates are image pixel indices.
"""

from __future__ import annotations

import numpy as np

from ..annotation import PlaneGeometry, spatial_shape
from ..errors import ImageError

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
LABELS_NAME = "SAM labels"

POSITIVE, NEGATIVE = "positive", "negative"
POINT_COLORS = {POSITIVE: np.array([0.2, 1.0, 0.2, 1.0]), NEGATIVE: np.array([1.0, 0.2, 0.2, 1.0])}
BOX_EDGE_COLOR = "#ffd400"
#: Box outlines are this many screen pixels wide at every zoom (see :func:`box_edge_width`).
BOX_EDGE_SCREEN_PX = 2.0


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def box_edge_width(zoom: float, scale: float = 1.0) -> float:
    """The edge width, in data units, of a box outline :data:`BOX_EDGE_SCREEN_PX` screen pixels wide.

    ``zoom`` is the camera's screen pixels per world unit, ``scale`` the layer's world
    units per data pixel.
    """
    return BOX_EDGE_SCREEN_PX / max(zoom * scale, 1e-6)


class ImageFrame:
    """How an image layer's data maps to the spatial label volume.

    Attributes:
        layer: the napari Image layer.
        channel_axis: data axis holding channels (multichannel), or None.
        shape: spatial shape (the label volume's shape).
        scale, translate: the layer's transform restricted to the spatial axes.
    """

    def __init__(self, layer, channels_first: bool = False) -> None:
        self.layer = layer
        self.rgb = bool(getattr(layer, "rgb", False))
        ndim = len(layer.data.shape)
        self.channel_axis = 0 if (channels_first and not self.rgb and ndim >= 3) else None
        self.shape = spatial_shape(layer.data.shape, rgb=self.rgb, channel_axis=self.channel_axis)
        keep = slice(1, None) if self.channel_axis == 0 else slice(None)
        self.scale = np.asarray(layer.scale, dtype=float)[keep]
        self.translate = np.asarray(layer.translate, dtype=float)[keep]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def geometry(self, viewer) -> PlaneGeometry:
        """The plane on screen, in spatial axes of this image.

        Raises:
            ImageError: in a 3D view, or when the displayed axes are not spatial axes.
        """
        dims = viewer.dims
        if dims.ndisplay != 2:
            raise ImageError("The annotator works on 2D planes: switch the viewer to 2D (Ctrl+Y).")
        offset = dims.ndim - self.ndim  # world axes before this volume's axes
        world_point = np.asarray(dims.point, dtype=float)[offset:]
        position = (world_point - self.translate) / self.scale
        displayed = [axis - offset for axis in dims.displayed]
        if min(displayed) < 0:
            raise ImageError(
                "The displayed axes are not axes of the selected image; reset the axis order (Ctrl+E rolls axes)."
            )
        return PlaneGeometry.at(self.shape, displayed, position)

    def layer_kwargs(self) -> dict:
        """scale and translate for layers that share this image's spatial frame."""
        return {"scale": tuple(self.scale), "translate": tuple(self.translate)}


def placed_like(layer, frame: ImageFrame) -> bool:
    """True if ``layer`` lies on the image pixel for pixel: same shape, scale and translate, no rotation
    or shear (a commit writes pixels by index, so any other placement would shift or warp them)."""
    if tuple(layer.data.shape) != tuple(frame.shape):
        return False
    affine = np.asarray(layer.affine.affine_matrix, dtype=float)
    rotate = np.asarray(layer.rotate, dtype=float)
    return (np.allclose(np.asarray(layer.scale, float), frame.scale)
            and np.allclose(np.asarray(layer.translate, float), frame.translate)
            and np.allclose(affine, np.eye(len(affine))) and np.allclose(rotate, np.eye(len(rotate)))
            and np.allclose(np.asarray(layer.shear, dtype=float), 0))


def matches(layer, viewer, ndim: int) -> bool:
    """True if ``layer`` is still in the viewer and has ``ndim`` dimensions."""
    return layer is not None and layer in viewer.layers and layer.ndim == ndim


def discard(viewer, layer) -> None:
    """Remove one of the annotator's own layers (prompts, preview) that no longer fits."""
    if layer is not None and layer in viewer.layers:
        viewer.layers.remove(layer)


def make_points_layer(viewer, frame: ImageFrame):
    """Points for positive (green) and negative (red) clicks; feature ``label``."""
    layer = viewer.add_points(
        np.zeros((0, frame.ndim)),
        ndim=frame.ndim,
        name=POINTS_NAME,
        features={"label": np.array([], dtype=object)},
        feature_defaults={"label": POSITIVE},
        face_color=POINT_COLORS[POSITIVE],
        border_color="white",
        border_width=0.15,
        size=max(4.0, min(frame.shape[-2:]) / 60),
        **frame.layer_kwargs(),
    )
    layer.metadata["napari_samkit_role"] = "points"
    return layer


def make_boxes_layer(viewer, frame: ImageFrame):
    layer = viewer.add_shapes(
        None,
        ndim=frame.ndim,
        name=BOXES_NAME,
        edge_color=BOX_EDGE_COLOR,
        face_color="transparent",
        edge_width=max(1.0, min(frame.shape[-2:]) / 300),
        **frame.layer_kwargs(),
    )
    layer.metadata["napari_samkit_role"] = "boxes"
    return layer


def preview_shape(frame: ImageFrame) -> tuple[int, ...]:
    """The preview covers one plane: size 1 on every axis but the last two."""
    return (1,) * (frame.ndim - 2) + tuple(frame.shape[-2:])


def make_preview_layer(viewer, frame: ImageFrame):
    """A plane-sized Labels layer, moved to the current plane with its translate."""
    layer = viewer.add_labels(
        np.zeros(preview_shape(frame), np.uint16), name=PREVIEW_NAME, opacity=0.6, **frame.layer_kwargs()
    )
    layer.editable = False
    layer.metadata["napari_samkit_role"] = "preview"
    return layer


def place_preview(layer, frame: ImageFrame, geometry: PlaneGeometry) -> None:
    """Move the preview layer onto the plane of ``geometry`` and clear it.

    Does not redraw: the caller writes the new preview, then calls ``layer.refresh()``
    once (each refresh costs about 10 ms of the click-to-preview time).
    """
    shape = tuple(1 if a in geometry.plane_axes else s for a, s in enumerate(geometry.spatial_shape))
    translate = frame.translate.copy()
    for axis in geometry.plane_axes:
        translate[axis] += geometry.position[axis] * frame.scale[axis]
    if layer.data.shape != shape:
        layer.data = np.zeros(shape, np.uint16)
    else:
        layer.data[...] = 0
    if not np.allclose(layer.translate, translate):
        layer.translate = translate


def make_labels_layer(viewer, frame: ImageFrame, name: str = LABELS_NAME):
    return viewer.add_labels(np.zeros(frame.shape, np.uint32), name=name, **frame.layer_kwargs())


def point_colors(labels: np.ndarray) -> np.ndarray:
    """``N x 4`` RGBA face colours for point labels ("positive"/"negative")."""
    negative = np.asarray(labels, dtype=object) == NEGATIVE
    return np.where(negative[:, None], POINT_COLORS[NEGATIVE], POINT_COLORS[POSITIVE])


def remove_rows(layer, rows) -> None:
    """Remove data rows (points or shapes) with their features, as the GUI does."""
    rows = {int(r) for r in rows}
    if not rows:
        return
    layer.selected_data = rows
    layer.remove_selected()
