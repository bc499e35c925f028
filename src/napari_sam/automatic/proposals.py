"""Box proposals from the image itself (no model): likely objects for box-only models.

A model trained on box prompts only (LiteMedSAM) gets nothing from a point grid;
its "segment everything" mode needs boxes. This module finds them with classical
image analysis (numpy, SciPy and scikit-image; well under a second for a
512 x 512 image):

1. Intensity. A stained bright-field image (colour, on a bright background:
   H&E, IHC; see :func:`is_stained_brightfield`) becomes its stain density: the
   hematoxylin optical density of a colour deconvolution (``skimage.color.rgb2hed``),
   in which nuclei are bright and eosin, background and the white of the slide are
   dark (hematoxylin plus DAB proposed 2,795 boxes there: DAB is texture too). On
   ``skimage.data.immunohistochemistry()`` the mean gray level proposed 2,394
   boxes of radius 2.8 px (texture); the stain density proposes 798 of radius 5.8 px.
   Any other image (gray, fluorescence composites, unstained bright field) is
   averaged to gray. Then a Gaussian smooths it (``sigma`` = 1 pixel).
2. Polarity. Objects are taken to be bright on a dark background (fluorescence,
   stain density) unless more than half of the pixels lie above the Otsu
   threshold, in which case the image is inverted (bright-field: dark objects on
   a bright background). ``polarity="bright"`` or ``"dark"`` forces it (and skips
   the stain density).
3. Foreground. Pixels above the Otsu threshold of the smoothed image are
   foreground, and so are pixels above a local threshold (mean of a window about
   four object diameters wide plus a fraction of the global contrast), which
   recovers dim objects next to very bright ones; holes are filled and
   components smaller than ``min_area`` removed.
4. Object scale. The typical object radius ``r`` is the median equivalent radius
   of the foreground components, or half of ``object_diameter`` when given.
5. Splitting. Touching objects are split by a watershed on the negated
   distance transform, seeded by its local maxima at least ``min_distance * r``
   apart, so two blobs joined by a neck narrower than themselves come apart.
   Regions still much larger than the median region (``split_area`` times) and
   not convex (solidity below 0.96) are clumps the watershed left whole: they
   are cut into ``round(area / median)`` parts by weighted k-means on their
   pixel coordinates. These cuts are rough; the model finds each outline.
6. Boxes. The bounding box of every resulting region (optionally grown by
   ``grow`` pixels on each side), clipped to the image. Not grown by default: the
   foreground already reaches a little beyond the objects, and LiteMedSAM
   segments best from tight boxes (on nuclei, boxes 2 pixels loose on each side
   cost 0.01 mean IoU, 4 pixels 0.045).

The regions themselves are returned too: they are a classical segmentation
(Otsu + watershed) that the model then refines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Proposals:
    """Box proposals and the regions they came from.

    Attributes:
        boxes: ``N x 4`` float64 (x0, y0, x1, y1), x1 and y1 exclusive.
        labels: ``H x W`` int32 regions; box ``i`` surrounds label ``i + 1``.
        radius: typical object radius in pixels (0 when nothing was found).
        polarity: ``"bright"`` or ``"dark"``: the objects found.
    """

    boxes: np.ndarray
    labels: np.ndarray
    radius: float
    polarity: str


#: Polarities of proposals: what the objects look like against their background.
POLARITIES = ("auto", "bright", "dark")
#: A colour image counts as stained when its median chroma (max - min channel,
#: 0-255) is at least this: 37 on skimage's immunohistochemistry, 0 on gray images.
STAIN_MIN_CHROMA = 12.0


def gray_image(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` (or ``H x W``) -> ``H x W`` float32 mean intensity."""
    array = np.asarray(rgb, dtype=np.float32)
    return array.mean(axis=-1) if array.ndim == 3 else array


def is_stained_brightfield(rgb: np.ndarray) -> bool:
    """Whether ``rgb`` (``H x W x 3``, 0-255) looks like a stained bright-field image:
    coloured (median chroma at least :data:`STAIN_MIN_CHROMA`) on a bright background
    (median gray level above the middle of the range)."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        return False
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 65536)))  # ~65k pixels decide
    sample = np.asarray(rgb[::step, ::step], dtype=np.float32)
    chroma = sample.max(-1) - sample.min(-1)
    return float(np.median(chroma)) >= STAIN_MIN_CHROMA and float(np.median(sample.mean(-1))) > 127.5


def stain_density(rgb: np.ndarray) -> np.ndarray:
    """``H x W`` float32 hematoxylin optical density of a bright-field RGB image,
    scaled so that its 99.9th percentile is 255 (nuclei and stained cells bright)."""
    from skimage.color import rgb2hed

    hed = rgb2hed(np.asarray(rgb, dtype=np.uint8))
    density = np.clip(hed[..., 0], 0, None)
    top = float(np.percentile(density, 99.9))
    return (density * (255.0 / top) if top > 0 else density).astype(np.float32)


def proposal_intensity(rgb: np.ndarray, polarity: str = "auto") -> tuple[np.ndarray, str]:
    """The ``H x W`` float32 image proposals are found in, and the polarity to use
    (``"auto"`` unless decided here): the stain density of a stained bright-field
    image (objects bright), else the gray level."""
    if polarity == "auto" and is_stained_brightfield(rgb):
        return stain_density(rgb), "bright"
    return gray_image(rgb), polarity


def _foreground(smooth: np.ndarray, polarity: str) -> tuple[np.ndarray, str, float]:
    """Otsu foreground with polarity detection; returns ``(mask, polarity, threshold)``."""
    from skimage.filters import threshold_otsu

    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros(smooth.shape, bool), "bright", float(smooth.max())
    threshold = float(threshold_otsu(smooth))
    above = smooth > threshold
    if polarity == "auto":
        polarity = "dark" if above.mean() > 0.5 else "bright"
    return (above if polarity == "bright" else ~above), polarity, threshold


def _remove_small(mask: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop components smaller than ``min_area``; returns ``(mask, labels, n)``."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask, labels, 0
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    mask = keep[labels]
    labels, n = ndimage.label(mask)
    return mask, labels, n


def propose_boxes(
    rgb: np.ndarray,
    *,
    polarity: str = "auto",
    object_diameter: float | None = None,
    sigma: float = 1.0,
    min_area: float | None = None,
    min_distance: float = 0.8,
    split_area: float | None = 1.8,
    local: bool = True,
    grow: float = 0.0,
) -> Proposals:
    """Candidate object boxes from the image (see the module docstring).

    Args:
        rgb: ``H x W x 3`` RGB (0-255, from :func:`napari_sam.preprocess.as_rgb`)
            or ``H x W`` gray.
        polarity: ``"auto"``, ``"bright"`` (objects brighter than background) or
            ``"dark"``.
        object_diameter: typical object diameter in pixels (None or 0: estimated
            from the foreground). It sets the watershed's seed distance and the
            local threshold's window.
        sigma: Gaussian smoothing in pixels.
        min_area: smallest object in pixels (default: 10 pixels, or 1/20 of the
            median component area, or of the area of ``object_diameter``, if larger).
        min_distance: smallest distance between the centres of two touching
            objects, in units of the typical radius (larger: fewer splits).
        split_area: regions larger than this many times the median region area
            are split into ``round(area / median)`` parts (see :func:`split_large`);
            None turns it off.
        local: also use a local threshold (recovers dim objects beside bright ones).
        grow: pixels added to every side of each box.

    Returns:
        :class:`Proposals`.
    """
    from scipy import ndimage

    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}.")
    if object_diameter is not None and not object_diameter >= 0:
        raise ValueError(f"object_diameter must be 0 (estimate it) or a size in pixels, got {object_diameter!r}.")
    gray, polarity = proposal_intensity(rgb, polarity)
    h, w = gray.shape
    smooth = ndimage.gaussian_filter(gray, sigma) if sigma > 0 else gray
    fg, polarity, threshold = _foreground(smooth, polarity)
    signal = smooth if polarity == "bright" else -smooth
    fg = ndimage.binary_fill_holes(fg)
    fg, comp, n = _remove_small(fg, 10 if min_area is None else min_area)
    if n == 0:
        return Proposals(np.zeros((0, 4)), np.zeros((h, w), np.int32), 0.0, polarity)
    # The typical object: given by its diameter, else the median foreground component.
    if object_diameter:
        radius = float(object_diameter) / 2.0
        typical_area = np.pi * radius**2
    else:
        typical_area = float(np.median(np.bincount(comp.ravel())[1:]))
        radius = float(np.sqrt(typical_area / np.pi))
    if local:
        # Local threshold: brighter than the mean around it by a share of the global contrast.
        size = int(max(15, 8 * radius)) | 1
        level = -threshold if polarity == "dark" else threshold
        background = float(np.median(signal[~fg])) if (~fg).any() else float(signal.min())
        local_mean = ndimage.uniform_filter(signal, size)
        extra = signal > local_mean + 0.25 * (level - background)
        extra &= signal > background + 0.25 * (level - background)
        fg = ndimage.binary_fill_holes(fg | ndimage.binary_opening(extra))
    if min_area is None:
        min_area = max(10.0, 0.05 * typical_area)
    fg, comp, n = _remove_small(fg, min_area)
    if n == 0:
        return Proposals(np.zeros((0, 4)), np.zeros((h, w), np.int32), radius, polarity)
    regions = split_touching(fg, radius, min_distance=min_distance)
    if split_area:
        regions = split_large(regions, split_area)
    regions, n, _ = _relabel(regions)
    slices = ndimage.find_objects(regions)
    boxes = np.array(
        [[s[1].start - grow, s[0].start - grow, s[1].stop + grow, s[0].stop + grow] for s in slices if s is not None],
        dtype=np.float64,
    ).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return Proposals(boxes, regions, radius, polarity)


def split_touching(fg: np.ndarray, radius: float, *, min_distance: float = 0.8) -> np.ndarray:
    """Split the foreground into objects with a distance-transform watershed.

    Seeds are the local maxima of the (slightly smoothed) distance to the
    background at least ``min_distance * radius`` apart, one region per seed;
    each seed floods the negated distance transform within the foreground, so
    objects joined by a neck narrower than themselves come apart.

    Args:
        fg: ``H x W`` bool foreground. radius: typical object radius (pixels).

    Returns:
        ``H x W`` int32 regions.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    parent, _ = ndimage.label(fg)
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(fg), 1.0) * fg
    peaks = peak_local_max(distance, min_distance=max(1, int(round(min_distance * radius))), labels=parent,
                           exclude_border=False)
    seeds = np.zeros(fg.shape, dtype=np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, peaks.shape[0] + 1)
    regions = watershed(-distance, seeds, mask=fg).astype(np.int32)
    # Components no seed reached (too small or flat) stay whole.
    missing = fg & (regions == 0)
    if missing.any():
        regions[missing] = parent[missing] + int(regions.max())
    return regions


def split_large(regions: np.ndarray, factor: float = 1.8, max_solidity: float = 0.96,
                iterations: int = 10) -> np.ndarray:
    """Split regions much larger than the typical one: clumps the watershed left whole.

    A region of area ``a >= factor * m`` (``m`` the median region area) is cut
    into ``k = round(a / m)`` parts by k-means on its pixel coordinates, weighted
    by the distance to the region's edge (so centres settle in the thick parts),
    started at ``k`` points spread along its major axis. The cuts need not be
    exact: each part only gives a box, and the model finds the object's outline.

    Args:
        regions: ``H x W`` int regions.

    Returns:
        ``H x W`` int32 regions (new ids after the existing ones).
    """
    from scipy import ndimage

    ids = np.unique(regions)
    ids = ids[ids != 0]
    if ids.size < 3:
        return regions
    areas = ndimage.sum_labels(np.ones(regions.shape), regions, ids)
    median = float(np.median(areas))
    big = ids[areas >= factor * median]
    if max_solidity < 1.0 and big.size:
        from skimage.measure import regionprops

        solidity = {r.label: r.solidity for r in regionprops(np.where(np.isin(regions, big), regions, 0))}
        big = np.array([i for i in big if solidity[i] < max_solidity], dtype=big.dtype)
    if big.size == 0:
        return regions
    out = regions.astype(np.int32, copy=True)
    next_id = int(out.max()) + 1
    slices = ndimage.find_objects(out)
    for region_id in big:
        window = slices[region_id - 1]
        mask = out[window] == region_id
        k = int(round(mask.sum() / median))
        coords = np.argwhere(mask).astype(np.float64)
        weight = ndimage.distance_transform_edt(mask)[mask]
        centre = np.average(coords, axis=0, weights=weight)
        _, _, axes = np.linalg.svd(coords - centre, full_matrices=False)
        along = (coords - centre) @ axes[0]
        centres = centre + np.quantile(along, (np.arange(k) + 0.5) / k)[:, None] * axes[0]
        for _ in range(iterations):
            nearest = ((coords[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            for j in range(k):
                chosen = nearest == j
                if chosen.any():
                    centres[j] = np.average(coords[chosen], axis=0, weights=weight[chosen])
        part = np.zeros(mask.shape, dtype=np.int32)
        part[mask] = nearest + 1
        view = out[window]
        for j in range(1, k):
            view[part == j + 1] = next_id
            next_id += 1
    return out


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Consecutive ids ``1..n`` in order of the old ids; returns ``(labels, n, old_ids)``."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lookup[labels], int(ids.size), ids
