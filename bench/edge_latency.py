"""Streaming latency and throughput through the edge (OpenAI-compatible SSE).

Starts its own platform (local stack, one worker, the edge) unless --url is given, then runs
N concurrent streams with fixed prompt and output lengths (ignore_eos) and reports TTFT,
inter-token gaps (per SSE content chunk), end-to-end latency and output tokens/s.

    .venv/bin/python bench/edge_latency.py --concurrency 1 16 --requests 32 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmchat_common.testing.services import create_account

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    ttft: float = 0.0
    gaps: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0
    error: str | None = None


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def one(http: httpx.AsyncClient, model: str, max_tokens: int, prompt: str) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    sample = Sample()
    start = time.perf_counter()
    last = 0.0
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                sample.error = f"HTTP {resp.status_code}"
                return sample
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    sample.tokens = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and choices[0]["delta"].get("content"):
                    now = time.perf_counter()
                    if not sample.ttft:
                        sample.ttft = now - start
                    else:
                        sample.gaps.append(now - last)
                    last = now
    except httpx.HTTPError as exc:
        sample.error = repr(exc)
    sample.e2e = time.perf_counter() - start
    return sample


async def run_level(
    url: str, api_key: str, model: str, concurrency: int, requests: int, max_tokens: int
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, headers=headers) as http:
        await one(http, model, 8, "warm up")
        queue = list(range(requests))
        samples: list[Sample] = []

        async def client() -> None:
            while queue:
                i = queue.pop()
                samples.append(await one(http, model, max_tokens, f"Tell me about the river number {i}."))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [s for s in samples if s.error is None]
    gaps = [g for s in ok for g in s.gaps]
    tokens = sum(s.tokens for s in ok)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "ttft_p50_ms": pct([s.ttft for s in ok], 50) * 1000,
        "ttft_p99_ms": pct([s.ttft for s in ok], 99) * 1000,
        "gap_p50_ms": pct(gaps, 50) * 1000,
        "gap_p99_ms": pct(gaps, 99) * 1000,
        "e2e_p50_ms": pct([s.e2e for s in ok], 50) * 1000,
        "tokens_per_s": tokens / wall,
        "tokens_per_s_per_stream": statistics.mean(s.tokens / s.e2e for s in ok) if ok else 0.0,
    }


# The benchmark measures the pipeline, not the limits: its own platform gets roomy ones.
ROOMY_LIMITS = {
    f"LLMCHAT_CHAT_LIMITS__USER__USER__{name}": "100000000"
    for name in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "CONCURRENT")
} | {
    f"LLMCHAT_CHAT_LIMITS__API_KEY__USER__{name}": "100000000"
    for name in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "CONCURRENT")
}


def start_platform(traces: bool) -> tuple[str, object]:
    sys.path.insert(0, str(REPO))
    from llmchat_common.testing.otlp import OtlpReceiver
    from llmchat_common.testing.services import start_auth, start_edge, start_worker
    from llmchat_common.testing.stack import LocalStack, StackPorts

    stack = LocalStack(Path(tempfile.mkdtemp(prefix="llmchat-bench-")), preferred=StackPorts(0, 0, 0, 0))
    receiver = OtlpReceiver().start() if traces else None
    if receiver is not None:
        # Every span of every service exported (sampling all), decoded by a real OTLP receiver.
        stack.telemetry_env = receiver.env()
    stack.start()
    worker, _ = start_worker(stack, models_dir=REPO / ".state" / "models")
    auth = start_auth(stack)
    edge, port = start_edge(stack, extra_env=ROOMY_LIMITS)

    def stop() -> None:
        edge.stop()
        auth.stop()
        worker.stop()
        stack.stop()
        if receiver is not None:
            print(f"spans exported: {len(receiver.all_spans())}", flush=True)
            receiver.stop()

    return f"http://127.0.0.1:{port}", stop


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an already running edge (default: start one)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LLMCHAT_API_KEY"),
        help="for --url (default: $LLMCHAT_API_KEY); a platform the benchmark starts gets its own",
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--traces", action="store_true", help="the platform it starts exports every span (OTLP) to a receiver"
    )
    args = parser.parse_args()
    stop = None
    url = args.url
    if url is None:
        url, stop = start_platform(args.traces)
    try:
        api_key = args.api_key or create_account(url).api_key
        print(
            "| concurrency | requests | errors | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms "
            "| e2e p50 ms | output tok/s | tok/s per stream |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for level in args.concurrency:
            r = asyncio.run(
                run_level(url, api_key, args.model, level, max(args.requests, level), args.max_tokens)
            )
            print(
                f"| {r['concurrency']:.0f} | {r['requests']:.0f} | {r['errors']:.0f} "
                f"| {r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | {r['gap_p50_ms']:.2f} "
                f"| {r['gap_p99_ms']:.2f} | {r['e2e_p50_ms']:.0f} | {r['tokens_per_s']:.0f} "
                f"| {r['tokens_per_s_per_stream']:.0f} |",
                flush=True,
            )
    finally:
        if stop is not None:
            stop()  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    sys.exit(main())
