"""Batches on Dask (dask.distributed): a local process pool, a SLURM/PBS cluster, or a cloud one.

Each image is one Dask task that reads its inputs and writes its outputs itself
(paths travel, pixels do not: on a cluster the files must be on a file system
the workers see). Each worker process loads the model once
(:func:`worker_model` keeps it for the process's lifetime) and sets its torch
threads once. Scheduling, retries of the tasks of a worker that died, and data
movement are Dask's; there is no scheduler of ours. Outputs are written atomically,
so a task that runs again after its worker died rewrites the same complete file;
nothing is lost or duplicated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .errors import Cancelled, SamkitError
from .image_task import ImageTask, SegmentSettings

#: Models loaded in this (worker) process, by (model, model_type, device).
_MODELS: dict[tuple, object] = {}


#: Environment of local worker processes: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, which
#: makes glibc drop its dynamic mmap threshold, so every array above 128 kB is a fresh mmap
#: with page faults; measured 1.8x slower segmentation per worker. A 32 MB mmap threshold
#: (glibc's own dynamic ceiling) gives the speed back and keeps Dask's memory trimming.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": 32 * 2**20}


class ClusterError(SamkitError):
    """A Dask cluster that cannot be reached or started."""

    exit_code = 2


def local_threads(workers: int, cores: int | None = None) -> int:
    """torch threads per worker on a machine of ``cores`` shared by ``workers`` processes (at least 1)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def worker_model(settings: SegmentSettings, threads: int | None = None):
    """The model of ``settings``, loaded once per process (on a Dask worker: once per worker).

    ``threads`` is set on every call: torch's CPU thread count is kept per calling
    thread with OpenMP, and Dask runs tasks in threads of its own.
    """
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    key = (settings.model, settings.model_type, settings.device)
    if key not in _MODELS:
        from .loading import load_model

        _MODELS[key] = load_model(settings.model, model_type=settings.model_type, device=settings.device)
    return _MODELS[key]


def worker_threads() -> int:
    """torch threads for a task on this Dask worker: its CPUs shared among its Dask threads.

    Dask's nanny starts workers with ``OMP_NUM_THREADS=1``, which would leave torch one
    thread on a worker that booked many CPUs.
    """
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):  # not on a worker
        nthreads = 1
    return local_threads(nthreads)


def segment_on_worker(task: ImageTask, settings: SegmentSettings, threads: int | None = None):
    """The Dask task of one image: load the model (once), segment, write; returns the summary record.

    Args:
        threads: torch threads (default :func:`worker_threads`).
    """
    from .batch import FAILED, ImageRecord, failure_message, run_task

    threads = threads or worker_threads()
    try:
        model = worker_model(settings, threads)
    except (Exception, MemoryError) as error:  # noqa: BLE001 - the record says why, the batch goes on
        return ImageRecord(str(task.image), str(task.output), FAILED, error=failure_message(error))
    return run_task(task, settings, model)


def connect(address: str | None = None, workers: int | None = None, threads: int | None = None):
    """``(client, cluster or None, threads)``: a Client of the cluster at ``address``, or of a new
    ``LocalCluster`` of ``workers`` processes with one Dask thread each (closed by the caller).

    Raises:
        ClusterError: dask.distributed is missing, or the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("Running on Dask needs dask.distributed: pip install 'dask[distributed]'.") from None
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"Cannot reach the Dask scheduler at {address} ({error}): check the address and "
                               "that the scheduler is running (dask scheduler prints its address).") from None
        return client, None, threads
    if workers is None or workers < 1:
        raise ClusterError(f"--workers takes a number of worker processes of at least 1; got {workers}.")
    import dask

    threads = threads or local_threads(workers)
    environ = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_ENVIRON.items()}
    try:
        with dask.config.set(environ):  # read once by each nanny, also for the workers it restarts
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=40)
    except (RuntimeError, OSError, TimeoutError) as error:
        raise ClusterError(
            f"Could not start a local Dask cluster of {workers} worker process(es) ({error}). In a script, put the "
            "code that starts it under `if __name__ == \"__main__\":` (worker processes import the script); "
            "else run on this machine, or start a cluster yourself and give its address.") from None
    return Client(cluster), cluster, threads


def run_on_dask(
    tasks: Sequence[ImageTask],
    settings: SegmentSettings,
    on_record: Callable,
    *,
    client=None,
    workers: int | None = None,
    address: str | None = None,
    threads: int | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[str]:
    """Run ``tasks`` as Dask tasks; ``on_record(record)`` as each one finishes. Returns notes for the person.

    A task whose worker died is retried by Dask on another worker (up to the
    scheduler's ``allowed-failures``); one that keeps killing workers is recorded as failed.

    Raises:
        Cancelled: ``cancel()`` said so; the tasks not started are cancelled, finished outputs stay.
    """
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    from .batch import FAILED, ImageRecord

    own = None
    if isinstance(client, str):
        address, client = client, None
    if client is None:
        client, own, threads = connect(address, workers, threads)
    try:
        futures = client.map(segment_on_worker, list(tasks), settings=settings, threads=threads, pure=False)
        by_future = dict(zip(futures, tasks))
        notes = [f"on Dask: {len(client.scheduler_info().get('workers', {}))} workers, "
                 + (f"{threads} torch thread(s) each" if threads else "torch threads = each worker's CPUs / its "
                    "Dask threads")]
        finished = as_completed(futures)
        for future in finished:
            task = by_future[future]
            try:
                record = future.result()
            except FutureCancelledError:
                continue
            except Exception as error:  # noqa: BLE001 - e.g. KilledWorker: the image killed its workers
                record = ImageRecord(str(task.image), str(task.output), FAILED,
                                     error=f"its worker died ({type(error).__name__}: {error}); too large for "
                                           "the worker's memory?")
            on_record(record)
            if cancel is not None and cancel():
                client.cancel([f for f in futures if not f.done()])
                raise Cancelled
        return notes
    finally:
        if own is not None:
            client.close()
            own.close()


# --------------------------------------------------------------------------- tiles of one large image


def segment_tile_on_worker(tile, path, settings: SegmentSettings, amg: dict, strategy: str, precision: str,
                           parts, description: dict, scaling, threads: int | None = None) -> int:
    """The Dask task of one tile of a large image: open the image (lazily), segment the tile's window,
    write its labels to the parts folder; returns the tile's index (no pixels travel)."""
    from .automatic.tiled import TileParts, segment_tile
    from .io import open_image
    from .source import PlaneSource

    model = worker_model(settings, threads or worker_threads())
    source = PlaneSource(open_image(path), settings.channel_axis, settings.preprocessing.get("channels"),
                         signature=description["image"], scaling=scaling)
    labels = segment_tile(source, tile, model, amg, strategy=strategy, precision=precision)
    TileParts(parts, description, writer=True).put(tile, labels)
    return tile.index


def run_tiles(client, path, source, grid, settings: SegmentSettings, amg: dict, strategy: str, precision: str,
              keeper, progress, cancel, result, threads: int | None = None):
    """``(tile, labels)`` of every tile in raster order, the missing ones segmented as Dask tasks.

    Tiles already in ``keeper`` (a resumed run) are not sent; a tile whose worker died is
    retried by Dask; stitching (in the caller) goes in raster order as tiles arrive.
    """
    from distributed import as_completed

    n = len(grid)
    done = {t.index for t in grid if keeper.get(t) is not None}
    result.reused = len(done)
    missing = [t for t in grid if t.index not in done]
    futures = client.map(segment_tile_on_worker, missing, path=str(path), settings=settings, amg=amg,
                         strategy=strategy, precision=precision, parts=str(keeper.path),
                         description=keeper.description, scaling=source.scaling, threads=threads, pure=False)
    finished = as_completed(futures)
    next_index = 0
    try:
        while next_index < n:
            while next_index < n and next_index in done:
                tile = grid[next_index]
                labels = keeper.get(tile)
                if labels is None:
                    raise SamkitError(f"Tile {next_index} was segmented but its labels are not in {keeper.path}: "
                                      "do the workers see that folder?")
                next_index += 1
                yield tile, labels
            if next_index >= n:
                break
            if cancel is not None and cancel():
                raise Cancelled(f"Segment everything was cancelled after {len(done)} of {n} tiles.")
            future = next(finished)
            try:
                index = future.result()
            except Exception as error:  # noqa: BLE001 - e.g. KilledWorker
                raise SamkitError(f"A tile could not be segmented on Dask ({type(error).__name__}: {error}); the "
                                  "tiles finished are kept: run again to resume.") from error
            done.add(index)
            result.segmented += 1
            if progress is not None:
                progress(len(done), n)
    finally:
        client.cancel([f for f in futures if not f.done()])


# --------------------------------------------------------------------------- planes of one stack


def segment_plane_on_worker(request, settings: SegmentSettings, threads: int | None = None):
    """The Dask task of one plane (a 2D :class:`~napari_sam.automatic.planes.StackRequest`): its
    labels ``H x W`` (or edge map), segmented with the worker's model."""
    from .automatic.planes import segment_stack

    return segment_stack(request, worker_model(settings, threads or worker_threads()))


#: Seconds between two looks at the planes' tasks (and at ``cancel``).
POLL_SECONDS = 0.1


def run_planes(client, request, settings: SegmentSettings, threads: int | None = None, progress=None, cancel=None):
    """``(plane, result or None, False)`` of each of ``request.planes`` as its Dask task finishes.

    Each plane's pixels (and boxes or rough labels) travel with its task and are
    segmented on a worker; a plane with nothing to segment gives None at once. A plane
    whose worker died is retried by Dask: the task holds its data, so the scheduler can
    run it again (data scattered to a worker would die with that worker).

    Raises:
        Cancelled: ``cancel()`` said so: the planes not finished are cancelled (a plane
            already running on a worker finishes there, unseen).
        SamkitError: a plane's bad input (its message, prefixed by the plane), or a plane
            Dask gave up on.
    """
    import time

    from .automatic.planes import on_plane, plane_request

    jobs = {}
    for plane in request.planes:
        one = plane_request(request, plane)
        if one is None:
            yield plane, None, False
        else:
            jobs[plane] = one
    n = len(request.planes)
    finished = n - len(jobs)
    if not jobs:
        return
    futures = client.map(segment_plane_on_worker, list(jobs.values()), settings=settings, threads=threads,
                         pure=False)
    plane_of = dict(zip(futures, jobs))
    pending = list(futures)
    try:
        while pending:
            if cancel is not None and cancel():
                raise Cancelled(f"Cancelled after {finished} of {n} planes.")
            done = [f for f in pending if f.done()]
            if not done:
                time.sleep(POLL_SECONDS)
                continue
            for future in done:
                pending.remove(future)
                plane = plane_of[future]
                try:
                    result = future.result()
                except SamkitError as error:
                    raise on_plane(error, plane) from error
                except Exception as error:  # noqa: BLE001 - e.g. KilledWorker
                    raise SamkitError(f"Plane {plane} could not be segmented on Dask ({type(error).__name__}: "
                                      f"{error}); too large for a worker's memory?") from error
                finished += 1
                if progress is not None:
                    progress(finished, n)
                yield plane, result, False
    finally:
        client.cancel([f for f in futures if not f.done()])
