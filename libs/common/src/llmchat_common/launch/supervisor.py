"""Keeps the processes of `make run` up: one that exits is started again, with backoff.

A worker whose engine died exits by design (its requests go to other workers, or wait for it);
under the supervisor it comes back and loads its model again. Infrastructure (nats-server,
Postgres, Redis) comes back on the same ports and data. Every restart is logged; the
supervisor's own `/readyz` (JSON: each process, its pid, restarts and last exit) and
`/metrics` (`llmchat_supervisor_restarts_total`, `llmchat_supervisor_up`) show them.

Backoff: a process is started again 1 s after it exits; one that exits again within a minute of
its start waits twice as long each time (at most 30 s); a minute up resets it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmchat_common.launch.process import ManagedProcess

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0


@dataclass
class Supervised:
    name: str
    start: Callable[[], ManagedProcess]
    proc: ManagedProcess
    started_at: float
    restarts: int = 0
    last_exit: int | None = None
    backoff_s: float = BACKOFF_MIN_S
    # When the pending restart is due (None: running, or not yet seen to exit).
    due_at: float | None = None

    def status(self) -> dict[str, Any]:
        running = self.due_at is None and self.proc.poll() is None
        return {
            "pid": self.proc.pid if running else None,
            "running": running,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "log": str(self.proc.log_path),
        }


@dataclass
class Supervisor:
    say: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    entries: dict[str, Supervised] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self._restarts = Counter(
            "llmchat_supervisor_restarts",
            "Processes of the platform started again after they exited.",
            ["process"],
            registry=self.registry,
        )
        self._up = Gauge(
            "llmchat_supervisor_up", "1 while the process runs.", ["process"], registry=self.registry
        )
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def adopt(self, name: str, proc: ManagedProcess, start: Callable[[], ManagedProcess]) -> ManagedProcess:
        """Watch `proc` (already started); `start` starts it again."""
        with self._lock:
            self.entries[name] = Supervised(name, start, proc, self.clock())
            self._up.labels(name).set(1)
            self._restarts.labels(name).inc(0)
        return proc

    def check(self) -> None:
        """One look at every process: note those that exited, start those whose time came."""
        for entry in list(self.entries.values()):
            now = self.clock()
            if entry.due_at is None:
                code = entry.proc.poll()
                if code is None:
                    if now - entry.started_at >= STABLE_S:
                        entry.backoff_s = BACKOFF_MIN_S
                    continue
                entry.proc.stop()  # whatever it left in its group goes too
                if now - entry.started_at < STABLE_S and entry.restarts:
                    entry.backoff_s = min(entry.backoff_s * 2, BACKOFF_MAX_S)
                entry.last_exit, entry.due_at = code, now + entry.backoff_s
                self._up.labels(entry.name).set(0)
                self.say(
                    f"supervisor: {entry.name} exited with {code}; starting it again in "
                    f"{entry.backoff_s:.0f}s (log: {entry.proc.log_path})"
                )
            elif now >= entry.due_at:
                try:
                    proc = entry.start()
                except Exception as exc:  # noqa: BLE001 - tried again after a longer wait
                    entry.backoff_s = min(entry.backoff_s * 2, BACKOFF_MAX_S)
                    entry.due_at = self.clock() + entry.backoff_s
                    self.say(
                        f"supervisor: {entry.name} did not start ({exc}); again in {entry.backoff_s:.0f}s"
                    )
                    continue
                with self._lock:
                    entry.proc, entry.started_at, entry.due_at = proc, self.clock(), None
                    entry.restarts += 1
                self._restarts.labels(entry.name).inc()
                self._up.labels(entry.name).set(1)
                self.say(f"supervisor: {entry.name} started again (restart {entry.restarts}, pid {proc.pid})")

    def status(self) -> dict[str, Any]:
        with self._lock:
            processes = {name: entry.status() for name, entry in self.entries.items()}
        return {"ready": all(p["running"] for p in processes.values()), "processes": processes}

    def processes(self) -> list[ManagedProcess]:
        return [entry.proc for entry in self.entries.values()]

    def serve(self, port: int) -> int:
        """`/readyz` and `/metrics` on 127.0.0.1:`port` (0: any free port); the port."""
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    status = supervisor.status()
                    body, kind = json.dumps(status).encode(), "application/json"
                    code = 200 if status["ready"] else 503
                elif self.path == "/metrics":
                    body, kind, code = generate_latest(supervisor.registry), CONTENT_TYPE_LATEST, 200
                else:
                    body, kind, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
