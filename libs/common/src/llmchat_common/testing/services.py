"""Start the llmchat services as real processes against a LocalStack (make run and tests)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from llmchat_common.testing.process import ManagedProcess, free_port, wait_until
from llmchat_common.testing.stack import LocalStack, _http_ok


def _env(stack: LocalStack, extra: Mapping[str, str]) -> dict[str, str]:
    env = {**os.environ, **stack.env(), **extra}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_edge(
    stack: LocalStack,
    *,
    port: int = 0,
    models: list[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    name: str = "chat",
    timeout: float = 60,
) -> tuple[ManagedProcess, int]:
    port = port or free_port()
    env = _env(
        stack,
        {
            "LLMCHAT_CHAT_PORT": str(port),
            "LLMCHAT_CHAT_MODELS": json.dumps(models or ["tiny-random"]),
            **(extra_env or {}),
        },
    )
    proc = ManagedProcess(
        name, [sys.executable, "-m", "llmchat_chat"], env=env, log_path=stack.logs / f"{name}.log"
    ).start()
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
        {
            "LLMCHAT_WORKER_MODEL": model,
            "LLMCHAT_WORKER_PORT": str(port),
            "LLMCHAT_WORKER_MODELS_DIR": str(models_dir or stack.state_dir / "models"),
            "LLMCHAT_WORKER_WORKER_ID": name,
            **({"LLMCHAT_WORKER_ALIAS": alias} if alias else {}),
            **(extra_env or {}),
        },
    )
    proc = ManagedProcess(
        name, [sys.executable, "-m", "llmchat_worker"], env=env, log_path=stack.logs / f"{name}.log"
    ).start()
    if wait:
        wait_for_worker(proc, port, timeout=timeout)
    return proc, port


def wait_for_worker(proc: ManagedProcess, port: int, *, timeout: float = 240) -> None:
    wait_until(
        lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), timeout=timeout, what=proc.name, proc=proc
    )
