"""A Dask worker killed in the middle of a run, for the tests that check that nothing is lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable


def run_killing_one_worker(client, work: Callable[[], object], started: Callable[[], bool],
                           timeout: float = 300.0) -> object:
    """Run ``work()`` in a thread; once ``started()`` says the run is under way, SIGKILL one of
    ``client``'s worker processes (its nanny starts another). Returns what ``work`` returned,
    after checking that it finished and that the killed worker is gone."""
    result = {}
    run = threading.Thread(target=lambda: result.update(value=work()))
    run.start()
    deadline = time.monotonic() + timeout
    while not started() and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = sorted(client.run(os.getpid).values())[0]
    os.kill(victim, signal.SIGKILL)
    run.join(timeout=timeout)
    assert not run.is_alive(), "the run did not finish after its worker was killed"
    assert victim not in client.run(os.getpid).values()  # it did die, and the run finished without it
    assert "value" in result, "the run raised (see the thread's exception above)"
    return result["value"]
