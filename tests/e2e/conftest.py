from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
