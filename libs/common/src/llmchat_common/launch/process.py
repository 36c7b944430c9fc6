"""A child process that is health-checked on start and always stopped: by us, or by the kernel
when its parent dies (PR_SET_PDEATHSIG), so test runs never leak servers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as `user` with its own group only (not root's group, which would
    select the group permission bits of root-owned folders)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, proc: ManagedProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.poll()}; log: {proc.log_path}\n{proc.tail()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s; log: {proc.log_path if proc else '-'}")


def find_binary(name: str, extra_dirs: Sequence[Path] = ()) -> str | None:
    for directory in extra_dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # Where a service serves its Prometheus metrics (set by the starters in services.py).
        self.metrics_port: int | None = None
        # What it is in the platform and where it listens (the launcher's topology.json).
        self.role = name
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            **as_user(self.user),
            # Own process group: Ctrl-C in a terminal reaches the launcher only, which then
            # stops children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return self

    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        """To the leader only: it shuts its own children down in order (e.g. a worker drains
        before stopping its engine)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def _kill_group(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the whole group (a worker and its engine processes) and every descendant
        (Postgres's backends are group leaders of their own): a stalled process, e.g. a long GC
        pause or a VM that lost its CPU, that wakes up later with `resume`."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGSTOP)
            self._signal_descendants(signal.SIGSTOP)
            self._wait_stopped()

    def resume(self) -> None:
        if self._proc is not None:
            self._signal_descendants(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGCONT)

    def _wait_stopped(self, timeout_s: float = 5.0) -> None:
        """A SIGSTOP takes effect when the kernel next runs the process: on a loaded machine a
        moment after the signal was sent (CI once read "running" just after it). Returns once
        the leader and every descendant are stopped, or after `timeout_s`."""
        import psutil

        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                leader = psutil.Process(self._proc.pid)
                group = [leader, *leader.children(recursive=True)]
                if all(proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE) for proc in group):
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.01)

    def _signal_descendants(self, sig: int) -> None:
        import psutil  # a test dependency: pause and resume are for tests only

        assert self._proc is not None
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self._proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the whole group at once (e.g. a worker and its engine processes)."""
        self._kill_group()
        if self._proc is not None:
            self._proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.signal(self.stop_signal)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._proc.wait(timeout=10)
        # Whatever the leader left behind in its group goes too.
        self._kill_group()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self._proc.returncode
