"""An asyncio load client for OpenAI-compatible streaming chat (aiohttp + orjson).

Light on purpose: the client shares the machine's two cores with the systems it measures, so it
does as little per chunk as it can (no SDK objects, no per-token pydantic). Per request it keeps
the arrival time and text of every content chunk; the summaries give TTFT, inter-chunk gaps,
time per output token, end-to-end time, output tokens/s and errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass(slots=True)
class Sample:
    start: float
    arrivals: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    end: float = 0.0
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else len(self.arrivals)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def connector() -> aiohttp.TCPConnector:
    # No pool limit: each stream holds its connection for the whole answer.
    return aiohttp.TCPConnector(limit=0, force_close=False)


async def stream_one(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]
) -> Sample:
    """One streamed chat completion, read line by line as SSE `data:` frames."""
    sample = Sample(start=time.perf_counter())
    try:
        async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return sample
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    sample.error = f"stream error: {str(chunk['error'])[:200]}"
                    break
                usage = chunk.get("usage")
                if usage:
                    sample.completion_tokens = usage.get("completion_tokens")
                choices = chunk.get("choices")
                if choices:
                    content = (choices[0].get("delta") or {}).get("content")
                    if content:
                        sample.arrivals.append(time.perf_counter())
                        sample.texts.append(content)
        if not sample.arrivals and sample.error is None:
            sample.error = "no content"
    except (aiohttp.ClientError, TimeoutError) as exc:
        sample.error = repr(exc)
    finally:
        sample.end = time.perf_counter()
    return sample


def chat_body(
    model: str, prompt: str, max_tokens: int, *, stream_usage: bool = True, **extra: Any
) -> dict[str, Any]:
    """Fixed output length: greedy and `ignore_eos` (a vLLM sampling parameter that vLLM's
    server, LiteLLM's proxy and llmchat all pass through)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        **extra,
    }
    if stream_usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def run_closed(
    base_url: str,
    api_key: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    concurrency: int,
    requests: int,
    timeout_s: float = 600,
) -> tuple[list[Sample], float]:
    """`concurrency` clients, each sending its next request when its last one ends, until
    `requests` have been sent. Returns the samples and the wall time."""
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    todo = list(range(requests))
    samples: list[Sample] = []
    async with aiohttp.ClientSession(
        connector=connector(), timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:

        async def client() -> None:
            while todo:
                samples.append(await stream_one(session, url, headers, make_body(todo.pop())))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return samples, wall


async def run_streams(
    base_url: str,
    api_key: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    streams: int,
    ramp_s: float,
    timeout_s: float = 600,
) -> tuple[list[Sample], float]:
    """`streams` requests at once, their starts spread evenly over `ramp_s` seconds."""
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        connector=connector(), timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:
        t0 = time.perf_counter()

        async def one(i: int) -> Sample:
            await asyncio.sleep(i * ramp_s / streams)
            return await stream_one(session, url, headers, make_body(i))

        samples = await asyncio.gather(*(one(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    return list(samples), wall


class LoopLag:
    """How late this process's own event loop runs timers (a late client would show up as
    latency of the system measured): sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append(loop.time() - due)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


def summarize(samples: list[Sample], wall: float) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    gaps = [b - a for s in ok for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]
    tpot = [(s.e2e - s.ttft) / (s.tokens - 1) for s in ok if s.tokens > 1]
    errors = [s.error for s in samples if s.error is not None]
    tokens = sum(s.tokens for s in ok)
    ms = 1000.0
    return {
        "requests": len(samples),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "ttft_p50_ms": pct([s.ttft for s in ok], 50) * ms,
        "ttft_p95_ms": pct([s.ttft for s in ok], 95) * ms,
        "ttft_p99_ms": pct([s.ttft for s in ok], 99) * ms,
        "gap_p50_ms": pct(gaps, 50) * ms,
        "gap_p95_ms": pct(gaps, 95) * ms,
        "gap_p99_ms": pct(gaps, 99) * ms,
        "tpot_p50_ms": pct(tpot, 50) * ms,
        "e2e_p50_ms": pct([s.e2e for s in ok], 50) * ms,
        "e2e_p99_ms": pct([s.e2e for s in ok], 99) * ms,
        "chunks_per_request": sum(len(s.arrivals) for s in ok) / len(ok) if ok else 0.0,
        "output_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else 0.0,
    }
