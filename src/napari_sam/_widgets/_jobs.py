"""Background work for the annotator: image embeddings and model loading.

Both run in napari thread workers (the viewer never freezes) and follow one rule:
every request gets a generation number, and a result is applied only if no newer
request was made since (a superseded embedding is still cached: it is correct for
its own plane). At most one encoder runs at a time; while it runs, only the newest
waiting request is kept, so scrolling through a stack does not queue every slice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from ..embedding import EmbeddingCache, ImageEmbedding


def _embed(model, plane: np.ndarray, key, channel_axis: int | None, channels, precision, store):
    """Worker body: the plane's embedding from the store, or preprocess and encode it (off the GUI thread)."""
    from ..embed import embed_one

    return embed_one(model, plane, key=key, store=store, channel_axis=channel_axis, channels=channels,
                     precision=precision)


def _predict(predictor, objects, memory):
    """Worker body for a slow preview: the decoder for every object, timed."""
    from ..interactive import predict_objects

    start = time.perf_counter()
    predictions = predict_objects(predictor, objects, memory)
    return predictions, time.perf_counter() - start


def _load(name_or_path: str, device: str | None):
    from ..loading import load_model

    return load_model(name_or_path, device=device)


class _Failed:
    """An exception carried out of a worker as a value (see :func:`start_worker`)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _catching(function, *args):
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - handed to on_error on the GUI thread
        return _Failed(error)


class Lifetime:
    """Whether a widget's jobs may still report to it: False once it is closed (see :func:`stop_jobs_on_exit`)."""

    def __init__(self) -> None:
        self.alive = True

    def __bool__(self) -> bool:
        return self.alive


def start_worker(function, *args, on_return=None, on_error=None, on_finish=None, lifetime: Lifetime | None = None):
    """Start ``function(*args)`` in a napari thread worker.

    The widgets show their own progress (a bar, a status line). napari's own activity
    bar for a function worker is an animated busy indicator: while it was shown, the
    automatic widget's run on coins took 11.2-11.8 s instead of 5.3-5.5 s on this 2-core
    machine (``benchmarks/widget_responsiveness.py``), so none is started.

    Exceptions come back to ``on_error`` as values, so napari does not also show
    its own raw traceback notification for an error the widget explains (without
    ``on_error``, napari shows the exception as for any worker). Once ``lifetime``
    is over (the widget was closed) no callback runs: its Qt parts are gone.
    """
    from napari.qt.threading import create_worker

    worker = create_worker(_catching, function, *args)

    def returned(value) -> None:
        if lifetime is not None and not lifetime:
            return
        if isinstance(value, _Failed):
            if on_error is not None:
                on_error(value.error)
            else:  # nobody explains it: napari shows the exception as usual
                from napari.utils.notifications import notification_manager

                error = value.error
                notification_manager.receive_error(type(error), error, error.__traceback__)
        elif on_return is not None:
            on_return(value)

    def finished() -> None:
        if lifetime is None or lifetime:
            on_finish()

    worker.returned.connect(returned)
    if on_finish is not None:
        worker.finished.connect(finished)
    worker.start()
    return worker


#: How long closing the viewer waits for a cancelled job to reach its next check.
SHUTDOWN_WAIT_MS = 300_000


def stop_jobs_on_exit(widget, cancel: Callable[[], None], lifetime: Lifetime | None = None) -> Lifetime:
    """When the Qt ``widget`` is destroyed or the application quits: ``cancel()`` its jobs and wait for them.

    Without this, closing the viewer during a long job ends the process with an
    abort: the job's thread outlives the Qt objects it reports to. Long jobs poll
    their cancel flag between steps, so the wait is one step (a cancelled
    fine-tuning run still saves its best epoch).

    Returns:
        ``lifetime`` (or a new :class:`Lifetime`), over from then on: pass it to
        :func:`start_worker` so that late results are not shown on deleted widgets.
    """
    lifetime = lifetime if lifetime is not None else Lifetime()
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    def shutdown(*_) -> None:
        if not lifetime:  # once: when the widget is destroyed, or the application quits
            return
        lifetime.alive = False
        cancel()
        QThreadPool.globalInstance().waitForDone(SHUTDOWN_WAIT_MS)

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(shutdown)

        def forget(*_) -> None:
            shutdown()
            try:
                app.aboutToQuit.disconnect(shutdown)
            except (TypeError, RuntimeError):  # already gone with the application
                pass

        widget.destroyed.connect(forget)
    else:
        widget.destroyed.connect(shutdown)
    return lifetime


@dataclass
class EmbeddingJob:
    generation: int
    key: Hashable
    model: object
    plane: np.ndarray
    channel_axis: int | None
    channels: list[int] | None
    precision: str | None
    store: object = None


class EmbeddingJobs:
    """Embeddings per (image key, plane, model), computed in the background.

    Args:
        on_ready: ``on_ready(key, embedding)`` on the GUI thread for the newest request.
        on_error: ``on_error(exception)`` for the newest request.
        on_busy: ``on_busy(bool)`` when the encoder starts or stops.
        cache: the :class:`EmbeddingCache` to use (the widget owns it).
    """

    def __init__(
        self,
        on_ready: Callable[[Hashable, ImageEmbedding], None],
        on_error: Callable[[BaseException], None],
        on_busy: Callable[[bool], None] | None = None,
        cache: EmbeddingCache | None = None,
        lifetime: Lifetime | None = None,
    ) -> None:
        self.cache = cache if cache is not None else EmbeddingCache()
        self.lifetime = lifetime
        self.generation = 0
        self._on_ready = on_ready
        self._on_error = on_error
        self._on_busy = on_busy or (lambda busy: None)
        self._running: EmbeddingJob | None = None
        self._worker = None
        self._pending: EmbeddingJob | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None

    def request(
        self,
        key: Hashable,
        model,
        plane: np.ndarray,
        channel_axis: int | None = None,
        channels: list[int] | None = None,
        precision: str | None = None,
        store=None,
    ) -> ImageEmbedding | None:
        """Ask for the embedding of ``plane``; supersedes every earlier request.

        ``key`` is the plane's :class:`~napari_sam.embedding.EmbeddingKey`; with a
        ``store`` (:class:`~napari_sam.store.EmbeddingStore`) the worker reads the
        embedding from it, or computes and writes it there.

        Returns:
            The cached embedding at once if there is one (``on_ready`` is not
            called then), else None and ``on_ready`` follows from a worker.
        """
        self.generation += 1
        self._pending = None
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        job = EmbeddingJob(self.generation, key, model, plane, channel_axis, channels, precision, store)
        if self._running is None:
            self._start(job)
        else:
            self._pending = job
        return None

    def cancel(self) -> None:
        """Drop every request made so far (the running encoder finishes; its result is cached only)."""
        self.generation += 1
        self._pending = None

    def _start(self, job: EmbeddingJob) -> None:
        self._running = job
        self._on_busy(True)
        self._worker = start_worker(
            _embed,
            job.model,
            job.plane,
            job.key,
            job.channel_axis,
            job.channels,
            job.precision,
            job.store,
            on_return=lambda embedding: self._returned(job, embedding),
            on_error=lambda error: self._errored(job, error),
            on_finish=self._finished,
            lifetime=self.lifetime,
        )

    def _returned(self, job: EmbeddingJob, embedding: ImageEmbedding) -> None:
        self.cache.put(job.key, embedding)
        if job.generation == self.generation:
            self._on_ready(job.key, embedding)

    def _errored(self, job: EmbeddingJob, error: BaseException) -> None:
        if job.generation == self.generation:
            self._on_error(error)

    def _finished(self) -> None:
        self._running = None
        self._worker = None
        job, self._pending = self._pending, None
        if job is None:
            self._on_busy(False)
            return
        cached = self.cache.get(job.key)  # e.g. back on the plane that just finished
        if cached is not None:
            self._on_busy(False)
            if job.generation == self.generation:
                self._on_ready(job.key, cached)
            return
        self._start(job)


class LatestJobs:
    """One background function at a time; while it runs only the newest request waits.

    Results (and errors) of superseded requests are dropped. Used for previews when
    the decoder is too slow for the GUI thread.
    """

    def __init__(self, on_result: Callable[[object, object], None], on_error: Callable[[BaseException], None],
                 lifetime: Lifetime | None = None) -> None:
        self.lifetime = lifetime
        self.generation = 0
        self._on_result = on_result
        self._on_error = on_error
        self._running = False
        self._pending: tuple | None = None

    @property
    def busy(self) -> bool:
        return self._running

    def request(self, tag, function, *args) -> None:
        """Run ``function(*args)``; ``on_result(tag, result)`` unless superseded."""
        self.generation += 1
        job = (self.generation, tag, function, args)
        if self._running:
            self._pending = job
        else:
            self._start(job)

    def cancel(self) -> None:
        self.generation += 1
        self._pending = None

    def _start(self, job: tuple) -> None:
        generation, tag, function, args = job
        self._running = True

        def returned(result) -> None:
            if generation == self.generation:
                self._on_result(tag, result)

        def errored(error: BaseException) -> None:
            if generation == self.generation:
                self._on_error(error)

        start_worker(function, *args, on_return=returned, on_error=errored, on_finish=self._finished,
                     lifetime=self.lifetime)

    def _finished(self) -> None:
        self._running = False
        job, self._pending = self._pending, None
        if job is not None and job[0] == self.generation:
            self._start(job)


class ModelLoader:
    """Loads models in the background; only the newest request is applied."""

    def __init__(self, on_loaded: Callable[[object], None], on_error: Callable[[BaseException], None],
                 lifetime: Lifetime | None = None) -> None:
        self.lifetime = lifetime
        self.generation = 0
        self.loading = False
        self._on_loaded = on_loaded
        self._on_error = on_error
        self._workers: set = set()

    def request(self, name_or_path: str, device: str | None) -> None:
        self.generation += 1
        generation = self.generation
        self.loading = True

        def returned(model) -> None:
            if generation == self.generation:
                self.loading = False
                self._on_loaded(model)

        def errored(error: BaseException) -> None:
            if generation == self.generation:
                self.loading = False
                self._on_error(error)

        def finished() -> None:
            self._workers.discard(worker)

        worker = start_worker(
            _load, name_or_path, device,
            on_return=returned, on_error=errored, on_finish=finished, lifetime=self.lifetime,
        )
        self._workers.add(worker)

    @property
    def busy(self) -> bool:
        """True while any load (even a superseded one) is still running."""
        return bool(self._workers)
