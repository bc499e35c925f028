"""Fine-tune a model on annotated images: the data engine's retraining step, on a CPU.

The image encoder stays frozen: every view of every image is embedded once
(:mod:`.views`), then only the prompt encoder and the mask decoder learn, with
AdamW, from simulated boxes, clicks and correction clicks (:mod:`.steps`).
After each epoch the validation images give two figures, the mean IoU from the
true box and from one click at each object's most interior pixel; the best epoch
(by their mean) is kept, training stops early after ``patience`` epochs without a
better one, and a checkpoint of the run is written, so a cancelled, interrupted or
crashed run resumes from its last epoch. At the end (or on cancel) the best weights
become a user model (:mod:`napari_sam.user_models`): ``load_model(name)``.

Run files live in ``<model folder>/.runs/<name>/``: ``state.pt`` (weights of the
trained parts, optimiser, history, random state; the last epoch) and ``best.pt``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..embedding import EmbeddingCache, image_key
from ..errors import TrainingError
from ..io import write_atomically
from ..models.sam import SamModel
from .data import TrainingImage, split_by_image
from .settings import FineTuneSettings
from .steps import training_loss, validate_view
from .views import View, build_views

#: ``format`` of a run's state file.
RUN_FORMAT = "napari-samkit-run/1"


@dataclass
class TrainingProgress:
    """What a progress callback is told, after each step and each epoch.

    Attributes:
        stage: ``"embedding"`` (views being embedded), ``"training"``, ``"epoch"``
            (an epoch ended: ``history`` has its figures) or ``"done"``.
        epoch: 1-based epoch (0 before training; the base model's figures).
        epochs: epochs asked for.
        step, steps: optimiser step within the epoch, or images embedded.
        loss: running mean training loss of the epoch.
        seconds_left: estimate for the remaining epochs (None until known).
        history: one dict per finished epoch (epoch, loss, box_iou, click_iou, seconds).
        message: one line for people.
    """

    stage: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float = math.nan
    seconds_left: float | None = None
    history: list[dict] = field(default_factory=list)
    message: str = ""


@dataclass
class FineTuneResult:
    """The outcome of :func:`fine_tune`.

    Attributes:
        name: the new model's name (``load_model(name)``).
        checkpoint: its state_dict file; metadata: its description file.
        history: figures of every epoch (epoch 0: the base model).
        best_epoch: the epoch whose weights were saved.
        stopped: ``"completed"``, ``"early stopping"`` or ``"cancelled"``.
    """

    name: str
    checkpoint: Path
    metadata: Path
    history: list[dict]
    best_epoch: int
    stopped: str

    @property
    def best(self) -> dict:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)

    @property
    def advice(self) -> str:
        """What to do when no epoch beat the base model on the validation images ("" otherwise)."""
        if self.best_epoch > 0:
            return ""
        return ("No epoch did better than the base model on the validation images, so the saved model is the base "
                "model unchanged: annotate more objects, train for more epochs, or raise the learning rate.")


def trainable_parameters(model: SamModel, settings: FineTuneSettings) -> list[torch.nn.Parameter]:
    """Freeze the image encoder (and the prompt encoder, if asked); return what trains."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    parts = [model.mask_decoder] + ([model.prompt_encoder] if settings.train_prompt_encoder else [])
    out = []
    for part in parts:
        for parameter in part.parameters():
            parameter.requires_grad_(True)
            out.append(parameter)
    return out


def trained_prompt_types(settings: FineTuneSettings) -> tuple[str, ...]:
    """The prompts a model fine-tuned with ``settings`` has learned."""
    clicks = settings.point_fraction > 0 or settings.correction_rounds > 0
    return ("boxes",) + (("points",) if clicks else ()) + (("masks",) if settings.correction_rounds > 0 else ())


def _trained_state(model: SamModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("image_encoder.")}


def _atomic_save(obj, path: Path) -> None:
    write_atomically(path, lambda part: torch.save(obj, part))


def _fingerprint(model: SamModel, settings: FineTuneSettings, train: Sequence, val: Sequence) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([model.spec.name, model.spec.sha256, settings.identity()], sort_keys=True).encode())
    for item in (*train, "|", *val):
        if isinstance(item, str):
            digest.update(item.encode())
        else:
            digest.update(image_key(np.asarray(item.image)).encode())
            digest.update(image_key(np.asarray(item.labels)).encode())
    return digest.hexdigest()


def evaluate_views(model: SamModel, views: Sequence[View]) -> dict[str, float]:
    """Mean IoU over all objects of ``views``: ``{"box_iou", "click_iou", "objects"}``."""
    if not views:
        return {"box_iou": math.nan, "click_iou": math.nan, "objects": 0}
    image_pe = _dense_pe(model)
    boxes, clicks = [], []
    model.eval()
    for view in views:
        box_iou, click_iou = validate_view(model, view, image_pe)
        boxes.append(box_iou)
        clicks.append(click_iou)
    box_all, click_all = torch.cat(boxes), torch.cat(clicks)
    return {"box_iou": float(box_all.mean()), "click_iou": float(click_all.mean()), "objects": int(box_all.numel())}


def _dense_pe(model: SamModel) -> torch.Tensor:
    with torch.no_grad():
        return model.prompt_encoder.get_dense_pe().detach().clone()


def _score(figures: dict) -> float:
    """The validation figure that picks the best epoch: mean of box and click IoU."""
    return 0.5 * (figures["box_iou"] + figures["click_iou"])


def fine_tune(
    images: Sequence[TrainingImage],
    *,
    name: str,
    base: SamModel | str = "lite_medsam",
    settings: FineTuneSettings | None = None,
    validation: Sequence[TrainingImage] | None = None,
    models_directory: str | os.PathLike | None = None,
    resume: bool = True,
    overwrite: bool = False,
    precision: str | None = None,
    embedding_cache: EmbeddingCache | None = None,
    embedding_store: str | os.PathLike | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> FineTuneResult:
    """Fine-tune ``base`` on annotated planes and save the result as the user model ``name``.

    Args:
        images: annotated planes (:func:`~napari_sam.training.load_training_images`).
        name: the new model's name (letters, digits, ``-_.``); refused if it exists
            unless ``overwrite`` or a run of the same name and data is resumed.
        base: the model to start from: a registry or user model name, a checkpoint
            path, or a loaded :class:`SamModel` (it is copied, not changed).
        settings: :class:`FineTuneSettings` (defaults if None).
        validation: held-out planes; None: split ``images`` by image
            (``settings.val_split``).
        models_directory: the user model folder (default: :func:`~napari_sam.user_models.models_dir`).
        resume: continue a run of the same name, base, data and settings from its
            last epoch (False: start again).
        overwrite: replace an existing user model ``name``.
        precision: image encoder precision for the embeddings (None: the default).
        embedding_cache: an :class:`~napari_sam.embedding.EmbeddingCache` reused across
            calls (views embedded once per session).
        embedding_store: a folder of embedding stores on disk (one per image): the
            views' embeddings are read from it and written to it as computed, so a
            crashed run resumes without the encoder and the next round of the data
            engine on the same images only embeds the new ones.
        progress: called with :class:`TrainingProgress` after each step and epoch.
        cancel: polled between steps; when True the run stops and the best epoch so
            far is saved (``stopped == "cancelled"``).

    Returns:
        :class:`FineTuneResult`.

    Raises:
        TrainingError, CheckpointError: bad data, names or settings (before any work).
    """
    import copy

    from ..automatic.amg import Cancelled
    from ..loading import load_model
    from ..user_models import check_model_name, checkpoint_path, metadata_path, models_dir
    from .export import save_user_model

    settings = (settings or FineTuneSettings()).check()
    check_model_name(name)
    folder = models_dir(models_directory)
    run_dir = folder / ".runs" / name
    state_file, best_file = run_dir / "state.pt", run_dir / "best.pt"
    if metadata_path(name, folder).exists() and not overwrite and not (resume and state_file.exists()):
        raise TrainingError(f"A model called {name!r} exists already ({checkpoint_path(name, folder)}); choose "
                            "another name, or pass overwrite=True (--overwrite) to replace it.")
    if not images:
        raise TrainingError("No annotated images to train on.")
    if validation is None:
        train_items, val_items = split_by_image(images, settings.val_split, settings.seed)
    else:
        train_items, val_items = list(images), list(validation)
    model = copy.deepcopy(base) if isinstance(base, SamModel) else load_model(base)
    base_name = model.spec.name
    params = trainable_parameters(model, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    order_rng = np.random.default_rng(settings.seed)
    fingerprint = _fingerprint(model, settings, train_items, val_items)

    def tell(**values) -> None:
        if progress is not None:
            progress(TrainingProgress(epochs=settings.epochs, **values))

    def embedding_progress(done: int, total: int) -> None:
        tell(stage="embedding", epoch=0, step=done, steps=total, message=f"embedding images {done}/{total}")

    try:
        shared = {"whole_image": settings.whole_image, "zoom": settings.zoom, "precision": precision,
                  "cache": embedding_cache, "store_folder": embedding_store, "cancel": cancel}
        train_views = build_views(model, train_items, progress=embedding_progress, **shared)
        val_views = build_views(model, val_items, **shared)
    except Cancelled:
        raise TrainingError("Fine-tuning was cancelled while embedding the images; nothing was trained.") from None
    if not train_views:
        raise TrainingError("The training images hold no object large enough to train on (at least 3 pixels of "
                            "the model's low-resolution frame).")

    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    history: list[dict] = []
    start_epoch, best_epoch, best_score = 1, 0, -math.inf
    if resume and state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state.get("format") != RUN_FORMAT or state.get("fingerprint") != fingerprint:
            raise TrainingError(
                f"A run called {name!r} with other data, base model or settings exists in {run_dir}: use the same "
                "ones to resume it, or start again with resume=False (--restart)."
            )
        model.load_state_dict(state["trained"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        order_rng.bit_generator.state = state["order_rng"]
        history, best_epoch, best_score = state["history"], state["best_epoch"], state["best_score"]
        start_epoch = state["epoch"] + 1
    if not history:
        figures = evaluate_views(model, val_views)
        history.append({"epoch": 0, "loss": math.nan, **figures, "seconds": 0.0})
        if val_views:
            best_score = _score(figures)
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(_trained_state(model), best_file)
    tell(stage="epoch", epoch=start_epoch - 1, history=list(history), message=_describe(history[-1]))

    stopped = "completed"
    image_pe = _dense_pe(model)
    epoch_seconds: list[float] = [h["seconds"] for h in history if h["epoch"] > 0]
    epoch = start_epoch - 1
    for epoch in range(start_epoch, settings.epochs + 1):
        if stopped != "completed":
            break
        started = time.perf_counter()
        batches = _epoch_batches(train_views, settings, order_rng)
        losses = []  # the decoder has no dropout or batch norm: eval mode throughout
        for step, samples in enumerate(batches, 1):
            if cancel is not None and cancel():
                stopped = "cancelled"
                break
            optimizer.zero_grad(set_to_none=True)
            loss = training_loss(model, samples, point_fraction=settings.point_fraction,
                                 box_noise=settings.box_noise, correction_rounds=settings.correction_rounds,
                                 generator=generator, image_pe=image_pe, backward=True)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            elapsed = time.perf_counter() - started
            per_epoch = elapsed / step * len(batches)
            left = per_epoch - elapsed + per_epoch * (settings.epochs - epoch)
            tell(stage="training", epoch=epoch, step=step, steps=len(batches), loss=float(np.mean(losses)),
                 seconds_left=left, history=list(history))
        if stopped == "cancelled":
            break
        figures = evaluate_views(model, val_views)
        seconds = time.perf_counter() - started
        epoch_seconds.append(seconds)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **figures, "seconds": seconds})
        score = _score(figures) if val_views else -float(np.mean(losses))
        if score > best_score:
            best_epoch, best_score = epoch, score
            _atomic_save(_trained_state(model), best_file)
        _atomic_save({
            "format": RUN_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "trained": _trained_state(model),
            "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
            "order_rng": order_rng.bit_generator.state, "history": history, "best_epoch": best_epoch,
            "best_score": best_score,
        }, state_file)  # fmt: skip
        left = float(np.mean(epoch_seconds)) * (settings.epochs - epoch)
        tell(stage="epoch", epoch=epoch, history=list(history), seconds_left=left, message=_describe(history[-1]))
        if val_views and epoch - best_epoch >= settings.patience:
            stopped = "early stopping"

    best_trained = torch.load(best_file, map_location="cpu", weights_only=True)
    model.load_state_dict(best_trained, strict=False)
    checkpoint, metadata = save_user_model(
        model, name, base_name=base_name, folder=folder, overwrite=True,
        training={
            "images": [item.name for item in train_items], "validation_images": [item.name for item in val_items],
            "objects": int(sum(len(v) for v in train_views)), "views": len(train_views),
            "prompts": {"first": f"box (noise {settings.box_noise:g} of the side) or one click "
                                 f"({settings.point_fraction:g} of objects)",
                        "corrections": settings.correction_rounds, "mask_feedback": True},
            "settings": settings.as_dict(), "epochs_run": epoch if stopped != "cancelled" else epoch - 1,
            "stopped": stopped, "best_epoch": best_epoch, "history": history,
        },
        validation={"base": history[0], "best": next(h for h in history if h["epoch"] == best_epoch)},
        prompt_types=trained_prompt_types(settings),
    )  # fmt: skip
    tell(stage="done", epoch=best_epoch, history=list(history),
         message=f"saved {name!r} (epoch {best_epoch}, {stopped}) to {checkpoint}")
    return FineTuneResult(name, checkpoint, metadata, history, best_epoch, stopped)


def _epoch_batches(views: Sequence[View], settings: FineTuneSettings, rng: np.random.Generator):
    """The batches of one epoch: every object once, through one of its views drawn at random.

    With few objects (fewer than ``min_steps_per_epoch`` batches) further passes over
    them follow, each with its own views and order (and, in the step, new prompts).

    Returns a list of batches, each a list of ``(view, object index)`` samples.
    """
    seen: dict[tuple[str, int], list[tuple[View, int]]] = {}
    for view in views:
        for row, object_id in enumerate(view.object_ids):
            seen.setdefault((view.source, int(object_id)), []).append((view, row))
    step = settings.objects_per_step
    batches: list[list[tuple[View, int]]] = []
    while seen and not batches or len(batches) < settings.min_steps_per_epoch:
        samples = [options[int(rng.integers(len(options)))] for options in seen.values()]
        order = rng.permutation(len(samples))
        if settings.max_objects_per_epoch:
            order = order[: settings.max_objects_per_epoch]
        batches += [[samples[i] for i in order[start : start + step]] for start in range(0, len(order), step)]
    return batches


def _describe(figures: dict) -> str:
    if figures["epoch"] == 0:
        head = "before training"
    else:
        head = f"epoch {figures['epoch']}: loss {figures['loss']:.4f},"
    return (f"{head} validation IoU box {figures['box_iou']:.3f}, one click {figures['click_iou']:.3f} "
            f"({figures['objects']} objects)")
