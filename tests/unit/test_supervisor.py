"""The supervisor of `make run` with real child processes and a fake clock: a process that
exits is started again after its backoff, which grows while it keeps crashing and resets once
it stays up; /readyz and /metrics say so."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.supervisor import BACKOFF_MAX_S, STABLE_S, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def proc(tmp_path: Path, code: str) -> ManagedProcess:
    return ManagedProcess("svc", [sys.executable, "-c", code], log_path=tmp_path / "svc.log").start()


def test_a_crashed_process_comes_back_with_growing_backoff(tmp_path: Path) -> None:
    clock, said = Clock(), list[str]()
    supervisor = Supervisor(say=said.append, clock=clock)
    started: list[ManagedProcess] = []

    def crash() -> ManagedProcess:
        started.append(proc(tmp_path, "raise SystemExit(3)"))
        return started[-1]

    first = crash()
    supervisor.adopt("svc", first, crash)
    first.wait(10)
    waits = []
    for _ in range(7):
        supervisor.check()  # sees the exit: a restart is due after the backoff
        entry = supervisor.entries["svc"]
        assert entry.due_at is not None and entry.last_exit == 3
        waits.append(entry.due_at - clock.now)
        clock.now = entry.due_at
        supervisor.check()  # starts it again
        started[-1].wait(10)
    assert waits == [1, 2, 4, 8, 16, 30, 30] and BACKOFF_MAX_S == 30
    assert supervisor.entries["svc"].restarts == 7
    assert any("svc exited with 3" in line for line in said)
    assert any("started again (restart 7" in line for line in said)


def test_backoff_resets_once_a_process_stays_up(tmp_path: Path) -> None:
    clock = Clock()
    supervisor = Supervisor(say=lambda _: None, clock=clock)
    running: list[ManagedProcess] = []

    def sleeper() -> ManagedProcess:
        running.append(proc(tmp_path, "import time; time.sleep(60)"))
        return running[-1]

    supervisor.adopt("svc", sleeper(), sleeper)
    entry = supervisor.entries["svc"]
    entry.backoff_s, entry.restarts = 16.0, 3
    clock.now += STABLE_S
    supervisor.check()
    assert entry.backoff_s == 1.0 and entry.due_at is None
    running[-1].kill()
    supervisor.check()
    assert entry.due_at == clock.now + 1.0  # up long enough: the shortest wait again
    clock.now += 1.0
    supervisor.check()
    assert entry.proc is running[-1] and entry.proc.poll() is None and entry.restarts == 4
    supervisor.entries["svc"].proc.stop()


def test_readyz_and_metrics(tmp_path: Path) -> None:
    clock = Clock()
    supervisor = Supervisor(say=lambda _: None, clock=clock)
    up = proc(tmp_path, "import time; time.sleep(60)")
    down = proc(tmp_path, "raise SystemExit(1)")
    supervisor.adopt("up", up, lambda: up)
    supervisor.adopt("down", down, lambda: proc(tmp_path, "import time; time.sleep(60)"))
    down.wait(10)
    supervisor.check()
    port = supervisor.serve(0)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert refused.value.code == 503
        status = json.loads(refused.value.read())
        assert status["processes"]["down"] == {
            **status["processes"]["down"],
            "running": False,
            "last_exit": 1,
        }
        assert status["processes"]["up"]["pid"] == up.pid
        clock.now += 1.0
        supervisor.check()
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read())
        assert ready["ready"] and ready["processes"]["down"]["restarts"] == 1
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'llmchat_supervisor_restarts_total{process="down"} 1.0' in metrics
        assert 'llmchat_supervisor_up{process="up"} 1.0' in metrics
    finally:
        supervisor.close()
        for entry in supervisor.entries.values():
            entry.proc.stop()
