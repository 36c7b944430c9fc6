from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmchat_common.launch.services import wait_for_worker
from llmchat_common.testing.vllm_serve import start_vllm_serve
from llmchat_worker.profiles import load_profile, serve_args
from tests.conftest import EMBEDDING_MODEL, MAIN_MODEL, Worker

CASES: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "Hello there, how are you?"}], "max_tokens": 40},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Write a haiku about autumn."},
        ],
        "max_tokens": 48,
    },
    {
        "messages": [
            {"role": "user", "content": "Count: one two three"},
            {"role": "assistant", "content": "four five"},
            {"role": "user", "content": "and then?"},
        ],
        "max_tokens": 32,
    },
]


class Reference:
    """vLLM called directly in its own process, started once per test run."""

    def __init__(self, model_path: Path, log_path: Path) -> None:
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in result()
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reference_engine.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"model_path": str(model_path), "cases": CASES}))
        self._proc.stdin.close()
        self._result: list[dict[str, Any]] | None = None

    def result(self) -> list[dict[str, Any]]:
        if self._result is None:
            assert self._proc.stdout is not None
            out = self._proc.stdout.read()
            self._proc.wait(timeout=60)
            self._log.close()
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert lines, f"reference engine failed (exit {self._proc.returncode}); see its log"
            self._result = json.loads(lines[-1].removeprefix("RESULT "))
        return self._result

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="session")
def reference(worker: object, models_dir: Path, stack: Any) -> Iterator[Reference]:
    ref = Reference(models_dir / "tiny-random", stack.logs / "reference-engine.log")
    try:
        yield ref
    finally:
        ref.stop()


@pytest.fixture(scope="session")
def embedding_model(embedding_worker: Worker, edge_url: str) -> str:
    """The embedding model, once its worker is ready and the edge sees it in the registry. The
    worker is asked for first, so its engine starts while the edge's fixtures start theirs."""
    started = time.monotonic()
    wait_for_worker(embedding_worker.proc, embedding_worker.port, timeout=600)
    print(f"\nembedding worker ready after a further {time.monotonic() - started:.1f} s")
    return EMBEDDING_MODEL


# The tool template of tiny-random's profile: for requests without tools it gives the model's
# own prompt, so one server serves every side-by-side case.
TOOL_TEMPLATE = Path(__file__).resolve().parents[2] / (
    "services/inference-worker/src/llmchat_worker/profiles/chatml_tools.jinja"
)


@pytest.fixture(scope="session")
def vllm_serve(worker: object, models_dir: Path, stack: Any) -> Iterator[tuple[str, str]]:
    """vLLM's own OpenAI server on the suite's model, with the worker's engine arguments, tool
    parser and strict level (`serve_args`): the reference of the side-by-side tests. Started
    after the worker has built the model; (url, api key)."""
    profile = load_profile(MAIN_MODEL)
    server = start_vllm_serve(
        [*serve_args(profile, str(models_dir / MAIN_MODEL)), "--chat-template", str(TOOL_TEMPLATE)],
        logs=stack.logs,
        kvcache_space_gib=profile.cpu_kvcache_space_gib,
    )
    try:
        yield server.url, server.api_key
    finally:
        server.stop()
