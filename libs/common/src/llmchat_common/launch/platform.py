"""The whole platform as supervised processes: what `make run` (one of each) and `make cluster`
(a 3-node NATS cluster, two of every service, nginx in front of the edges) start.

Every process is adopted by the supervisor, which starts one that exits again on the same ports
(infrastructure with its data). `topology.json` lists them all: name, role, pid, ports, log.
"""

from __future__ import annotations

import functools
import json
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchat_common.launch.process import ManagedProcess, find_binary, free_port, port_open, wait_until
from llmchat_common.launch.services import (
    start_auth,
    start_edge,
    start_history,
    start_metrics,
    start_worker,
)
from llmchat_common.launch.stack import LocalStack, _http_ok
from llmchat_common.launch.supervisor import Supervisor

# The services whose operator commands `make <service>-cli` runs against this platform.
CLI_SERVICES = ("auth", "history", "metrics")
RPC_STARTERS: dict[str, Callable[..., ManagedProcess]] = {
    "auth": start_auth,
    "history": start_history,
    "metrics": start_metrics,
}


@dataclass
class Platform:
    stack: LocalStack
    supervisor: Supervisor
    # The edges behind the proxy (name: port), and the proxy itself.
    edges: dict[str, int] = field(default_factory=dict)
    proxy: Proxy | None = None

    # -- infrastructure -------------------------------------------------------------------
    def start_infrastructure(self) -> None:
        """nats-server (or its cluster), Postgres and Redis; each comes back on its ports, with
        its data, when it exits."""
        self.stack.start()
        stack = self.stack
        starters: dict[str, Callable[[], ManagedProcess]] = {
            "nats": lambda: stack.start_nats(stack.ports.nats, stack.ports.nats_monitor),
            "postgres": lambda: stack.start_postgres(port=stack.ports.postgres),
            "redis": lambda: stack.start_redis(port=stack.ports.redis),
        }
        for node in stack.cluster:
            starters[node.name] = functools.partial(stack.start_nats_node, node.name)
        for proc in list(stack.processes):

            def start(name: str = proc.name) -> ManagedProcess:
                stack.processes[:] = [p for p in stack.processes if p.name != name]  # the dead one
                return starters[name]()

            self.supervisor.adopt(proc.name, proc, start)
        for service in CLI_SERVICES:
            write_cli_env(stack, service)

    # -- services -------------------------------------------------------------------------
    def worker(
        self, model: str, name: str, extra_env: Mapping[str, str] | None = None
    ) -> tuple[ManagedProcess, int]:
        """A worker loading `model` (not waited for: see `wait_for_worker`)."""
        env = dict(extra_env or {})
        proc, port = start_worker(self.stack, model=model, name=name, wait=False, extra_env=env)
        # Started again on the same health port: it loads its model again.
        self.supervisor.adopt(
            name,
            proc,
            lambda: start_worker(self.stack, model=model, name=name, port=port, wait=False, extra_env=env)[0],
        )
        return proc, port

    def service(self, service: str, name: str) -> ManagedProcess:
        """auth, history or metrics (replicas share the work: queue groups, durable consumers)."""
        starter = RPC_STARTERS[service]
        return self.supervisor.adopt(
            name, starter(self.stack, name=name), lambda: starter(self.stack, name=name, wait=False)
        )

    def edge(self, name: str, *, port: int = 0, models: list[str], extra_env: Mapping[str, str]) -> int:
        proc, port = start_edge(self.stack, port=port, models=models, extra_env=extra_env, name=name)
        self.supervisor.adopt(
            name,
            proc,
            lambda: start_edge(
                self.stack, port=port, models=models, extra_env=extra_env, name=name, wait=False
            )[0],
        )
        self.edges[name] = port
        return port

    def start_proxy(self, port: int) -> int:
        """nginx on `port`, in front of every edge started so far."""
        self.proxy = Proxy(self.stack.state_dir / "nginx", self.stack.logs, port, dict(self.edges))
        proc = self.proxy.start()
        assert self.proxy is not None
        self.supervisor.adopt("nginx", proc, self.proxy.start)
        return self.proxy.port

    # -- state ----------------------------------------------------------------------------
    def topology(self) -> list[dict[str, Any]]:
        rows = []
        for name, entry in self.supervisor.entries.items():
            proc = entry.proc
            running = entry.due_at is None and proc.poll() is None
            rows.append(
                {
                    "name": name,
                    "role": proc.role,
                    "pid": proc.pid if running else None,
                    "ports": proc.ports,
                    "log": str(proc.log_path),
                }
            )
        return rows

    def write_topology(self, path: Path, extra: Mapping[str, Any]) -> None:
        """Every process with its name, role, pid, ports and log file (rewritten when a pid
        changes), beside where the platform answers."""
        body = json.dumps({**extra, "processes": self.topology()}, indent=2) + "\n"
        if not path.exists() or path.read_text() != body:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(body)
            tmp.replace(path)

    def tick(self) -> None:
        """One supervision round: restarts, and the proxy's view of which edges are ready."""
        self.supervisor.check()
        if self.proxy is not None:
            self.proxy.check_edges()

    def stop(self) -> None:
        """Services first (newest first), then the infrastructure."""
        self.supervisor.close()
        infrastructure = {p.name for p in self.stack.processes}
        for proc in reversed(self.supervisor.processes()):
            if proc.name not in infrastructure:
                proc.stop()
        self.stack.stop()


@dataclass
class Proxy:
    """nginx in front of the edges: SSE unbuffered, long reads, the client's address in
    X-Forwarded-For. Open-source nginx checks upstreams only passively (a refused connection),
    so the launcher asks each edge's `/readyz` every round and marks one that is not ready
    `down` (a reload, which lets open streams finish): a draining or starting edge gets no new
    requests."""

    folder: Path
    logs: Path
    port: int
    edges: dict[str, int]
    down: frozenset[str] = frozenset()
    proc: ManagedProcess | None = None
    last_check: float = 0.0

    def config(self) -> str:
        servers = "".join(
            f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s{' down' * (name in self.down)};\n"
            for name, port in sorted(self.edges.items())
        )
        temp = "".join(
            f"  {kind}_temp_path {self.folder / 'tmp' / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            "worker_processes 1;\n"
            f"pid {self.folder / 'nginx.pid'};\n"
            f"error_log {self.logs / 'nginx-error.log'} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            f"  access_log {self.logs / 'nginx-access.log'};\n"
            f"{temp}"
            # The edges enforce their own body caps (per route, while reading).
            "  client_max_body_size 0;\n"
            "  upstream edges {\n"
            "    least_conn;\n"
            f"{servers}"
            "    keepalive 64;\n"
            "  }\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    location / {\n"
            "      proxy_pass http://edges;\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_set_header Host $host;\n"
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
            "      proxy_set_header X-Forwarded-Proto $scheme;\n"
            # Server-sent events go through as they are written; answers and resumes can be
            # long. A request not yet sent to an edge (refused: it died) goes to the other.
            "      proxy_buffering off;\n"
            "      proxy_request_buffering off;\n"
            "      proxy_cache off;\n"
            "      proxy_read_timeout 3600s;\n"
            "      proxy_send_timeout 3600s;\n"
            "      proxy_next_upstream error timeout;\n"
            "    }\n"
            "  }\n"
            "}\n"
        )

    def write(self) -> Path:
        # nginx makes the temp folders in it, owned by its worker processes' user.
        (self.folder / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nginx.conf"
        conf.write_text(self.config())
        return conf

    def start(self) -> ManagedProcess:
        binary = find_binary("nginx", [Path("/usr/sbin")])
        if binary is None:
            raise RuntimeError("nginx not found: `make setup` installs Debian's package")
        self.port = self.port or free_port()
        conf = self.write()
        argv = [binary, "-e", str(self.logs / "nginx-error.log"), "-p", str(self.folder), "-c", str(conf)]
        proc = ManagedProcess("nginx", [*argv, "-g", "daemon off;"], log_path=self.logs / "nginx.log").start()
        proc.role, proc.ports = "proxy", {"http": self.port}
        wait_until(lambda: port_open(self.port), timeout=30, what="nginx", proc=proc)
        self.proc = proc
        return proc

    def check_edges(self, every_s: float = 1.0) -> None:
        now = time.monotonic()
        if now - self.last_check < every_s or self.proc is None:
            return
        self.last_check = now
        down = frozenset(
            name for name, port in self.edges.items() if not _http_ok(f"http://127.0.0.1:{port}/readyz")
        )
        if down == self.down or len(down) == len(self.edges):
            # All down: keep them all listed (nginx then tries each, and the client sees why).
            return
        self.down = down
        self.write()
        self.proc.signal(signal.SIGHUP)


def write_cli_env(stack: LocalStack, service: str) -> None:
    """A service's environment for its operator commands (`make <service>-cli`): this run's
    ports and the service's NATS user (only its owner may read the file)."""
    path = stack.state_dir / f"{service}-cli.env"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{key}={value}\n" for key, value in stack.env(service).items()))


def webhook_secret(stack: LocalStack) -> str:
    """The master secret job webhooks are signed under (per-user keys derive from it), made
    once per state folder so the keys users saved keep verifying after a restart."""
    return state_secret(stack, "webhook-secret")


def state_secret(stack: LocalStack, name: str) -> str:
    """A random secret made once per state folder (only its owner may read the file), the same
    for every process given it: e.g. the edges' API-key cache secret, which every edge of a
    cluster must share (else each edge refuses the others' Redis entries)."""
    path = stack.state_dir / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path.read_text().strip()
