"""Runs the same model through vLLM directly (its offline `LLM.chat`, which applies the model's
chat template itself) and prints the greedy results as JSON. The e2e tests compare the edge's
answers with these: same text, same token counts."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    spec = json.loads(sys.stdin.read())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=spec["model_path"],
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        gpu_memory_utilization=0.3,
        seed=0,
    )
    results = []
    for case in spec["cases"]:
        out = llm.chat(case["messages"], SamplingParams(temperature=0, max_tokens=case["max_tokens"]))[0]
        completion = out.outputs[0]
        results.append(
            {
                "text": completion.text,
                "completion_tokens": len(completion.token_ids),
                "prompt_tokens": len(out.prompt_token_ids or []),
                "finish_reason": completion.finish_reason,
            }
        )
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
