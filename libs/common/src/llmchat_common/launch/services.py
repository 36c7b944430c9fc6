"""Start the llmchat services as real processes against a LocalStack (make run and tests)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import nats

from llmchat_common import subjects
from llmchat_common.launch.process import ManagedProcess, free_port, wait_until
from llmchat_common.launch.stack import LocalStack, _http_ok
from llmchat_common.rpc import RpcReply


def _env(stack: LocalStack, service: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The stack's locations plus `service`'s own NATS credentials and a free port for its
    Prometheus metrics (unless `extra` names one)."""
    env = {**os.environ, **stack.env(service), **extra}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault(metrics_port_variable(service), str(free_port()))
    return env


def metrics_port_variable(service: str) -> str:
    return f"LLMCHAT_{service.upper()}_PROMETHEUS_PORT"


def _managed(stack: LocalStack, name: str, module: str, service: str, env: dict[str, str]) -> ManagedProcess:
    proc = ManagedProcess(name, [sys.executable, "-m", module], env=env, log_path=stack.logs / f"{name}.log")
    proc.metrics_port = int(env[metrics_port_variable(service)]) or None
    if proc.metrics_port:
        proc.ports["metrics"] = proc.metrics_port
    return proc.start()


def start_edge(
    stack: LocalStack,
    *,
    port: int = 0,
    models: list[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    name: str = "chat",
    timeout: float = 60,
    wait: bool = True,
) -> tuple[ManagedProcess, int]:
    port = port or free_port()
    env = _env(
        stack,
        "chat",
        {
            "LLMCHAT_CHAT_PORT": str(port),
            "LLMCHAT_CHAT_MODELS": json.dumps(models or ["tiny-random"]),
            **(extra_env or {}),
        },
    )
    proc = _managed(stack, name, "llmchat_chat", "chat", env)
    proc.role, proc.ports["http"] = "edge", port
    if wait:
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=timeout, what=name, proc=proc)
    return proc, port


def start_worker(
    stack: LocalStack,
    *,
    model: str = "tiny-random",
    alias: str | None = None,
    port: int = 0,
    models_dir: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    name: str = "worker",
    wait: bool = True,
    timeout: float = 240,
) -> tuple[ManagedProcess, int]:
    port = port or free_port()
    env = _env(
        stack,
        "worker",
        {
            "LLMCHAT_WORKER_MODEL": model,
            "LLMCHAT_WORKER_PORT": str(port),
            "LLMCHAT_WORKER_MODELS_DIR": str(models_dir or stack.state_dir / "models"),
            "LLMCHAT_WORKER_WORKER_ID": name,
            **({"LLMCHAT_WORKER_ALIAS": alias} if alias else {}),
            **(extra_env or {}),
        },
    )
    proc = _managed(stack, name, "llmchat_worker", "worker", env)
    proc.role, proc.ports["health"] = "worker", port
    if wait:
        wait_for_worker(proc, port, timeout=timeout)
    return proc, port


def wait_for_worker(proc: ManagedProcess, port: int, *, timeout: float = 240) -> None:
    wait_until(
        lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=timeout, what=proc.name, proc=proc
    )


def start_auth(
    stack: LocalStack,
    *,
    extra_env: Mapping[str, str] | None = None,
    name: str = "auth",
    timeout: float = 60,
    wait: bool = True,
) -> ManagedProcess:
    return start_rpc_service(stack, "auth", extra_env=extra_env, name=name, timeout=timeout, wait=wait)


def start_history(
    stack: LocalStack,
    *,
    extra_env: Mapping[str, str] | None = None,
    name: str = "history",
    timeout: float = 60,
    wait: bool = True,
) -> ManagedProcess:
    return start_rpc_service(stack, "history", extra_env=extra_env, name=name, timeout=timeout, wait=wait)


def start_metrics(
    stack: LocalStack,
    *,
    extra_env: Mapping[str, str] | None = None,
    name: str = "metrics",
    timeout: float = 60,
    wait: bool = True,
) -> ManagedProcess:
    return start_rpc_service(stack, "metrics", extra_env=extra_env, name=name, timeout=timeout, wait=wait)


# The services without a port: their package and the subject of their ping.
_RPC_SERVICES = {
    "auth": ("llmchat_auth", subjects.auth_subject("ping")),
    "history": ("llmchat_history", subjects.history_subject("ping")),
    "metrics": ("llmchat_metrics", subjects.usage_subject("ping")),
}


def start_rpc_service(
    stack: LocalStack,
    service: str,
    *,
    extra_env: Mapping[str, str] | None = None,
    name: str | None = None,
    timeout: float = 60,
    wait: bool = True,
) -> ManagedProcess:
    """A service without a port is ready once it answers a ping over NATS."""
    module, ping_subject = _RPC_SERVICES[service]
    name = name or service
    env = _env(stack, service, extra_env or {})
    proc = _managed(stack, name, module, service, env)
    proc.role = service
    if wait:
        wait_until(lambda: rpc_ping(stack, ping_subject), timeout=timeout, what=name, proc=proc)
    return proc


def rpc_ping(stack: LocalStack, subject: str) -> bool:
    """One request-reply round trip, with the edge's credentials (the only caller)."""

    async def ping() -> bool:
        env = stack.env("chat")
        nc = await nats.connect(
            env["LLMCHAT_NATS_URL"].split(","),
            user=env.get("LLMCHAT_NATS_USER"),
            password=env.get("LLMCHAT_NATS_PASSWORD"),
            connect_timeout=2,
            max_reconnect_attempts=0,
        )
        try:
            reply = await nc.request(subject, b"{}", timeout=1)
            return bool(RpcReply.model_validate_json(reply.data).ok)
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        finally:
            await nc.close()

    # Callers may run inside an event loop (async fixtures): use a thread of our own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(asyncio.run, ping()).result(timeout=10)
        except Exception:  # noqa: BLE001
            return False
