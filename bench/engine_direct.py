"""The bare engine as a reference: vLLM's AsyncLLM called in-process with the same model, the
same chat template and the same load shape as bench/edge_latency.py (no NATS, no HTTP).

    .venv/bin/python bench/engine_direct.py --concurrency 1 16 --requests 48 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


async def run_level(engine: Any, params: Any, level: int, requests: int, max_tokens: int) -> None:
    from llmchat_common.contracts import ChatMessage

    queue = list(range(requests))
    ttfts: list[float] = []
    e2es: list[float] = []
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while queue:
            i = queue.pop()
            prompt = engine.encode_chat(
                [ChatMessage(role="user", content=f"Tell me about the river number {i}.")]
            )
            start = time.perf_counter()
            first = 0.0
            async for chunk in engine.generate(f"r{level}-{i}", prompt, params, max_tokens):
                if chunk.token_ids and not first:
                    first = time.perf_counter() - start
                tokens += len(chunk.token_ids)
            ttfts.append(first)
            e2es.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(level)))
    wall = time.perf_counter() - t0
    print(
        f"| {level} | {len(e2es)} | {pct(ttfts, 50) * 1000:.1f} | {pct(ttfts, 99) * 1000:.1f} "
        f"| {pct(e2es, 50) * 1000:.0f} | {tokens / wall:.0f} |",
        flush=True,
    )


async def run(args: argparse.Namespace) -> None:
    from llmchat_common.contracts import GenerationParams
    from llmchat_worker.engine import VllmEngine
    from llmchat_worker.profiles import load_profile

    engine = VllmEngine(load_profile("tiny-random"), REPO / ".state" / "models")
    engine.start()
    params = GenerationParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    print("| concurrency | requests | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | output tok/s |")
    print("|---|---|---|---|---|---|")
    for level in args.concurrency:
        await run_level(engine, params, level, max(args.requests, level), args.max_tokens)
    engine.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=128)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
