"""The worker's exit watchdog: once its shutdown is done, a worker process that a stuck thread
keeps alive exits anyway, with the threads' stacks in its log, so that its supervisor can start
it again (seen once under the cluster's rolling restart: a worker that never exited)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

# A process whose shutdown is "done" while a non-daemon thread never returns: without the
# watchdog, the interpreter waits for that thread forever.
STUCK = """
import threading, time
from llmchat_worker.main import WorkerState, exit_within
threading.Thread(target=time.sleep, args=(3600,), name="stuck-executor-thread").start()
exit_within(0.5, WorkerState(fatal={fatal}))
print("shutdown complete", flush=True)
"""


@pytest.mark.parametrize(("fatal", "code"), [(False, 0), (True, 1)])
def test_a_stuck_thread_does_not_keep_the_worker_alive(fatal: bool, code: int) -> None:
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", STUCK.format(fatal=fatal)], capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert run.returncode == code, run.stderr
    assert "shutdown complete" in run.stdout
    # The thread dump names the thread that held the process (faulthandler writes to stderr).
    assert "shutdown did not finish" in run.stderr
    assert "Thread 0x" in run.stderr
    assert took < 30, f"took {took:.1f} s"
