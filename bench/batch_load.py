"""A 10,000-line batch beside interactive chat (the Batch API, issue 17).

The platform as `make run` starts it (tiny-random). First the chat load alone: `--users`
interactive users, each sending a streamed chat completion (64 tokens), reading it and waiting
`--think-s` before the next, for `--baseline-s` seconds. Then the same load while a batch of
`--lines` chat lines (64 output tokens each, `ignore_eos`) runs, until the batch ends.

Measured: the batch's lines per second (lines / (completed_at - in_progress_at)) and the time to
submit it, and the users' TTFT p50/p99 with and without the batch. Checked: the batch completes
with exactly one output line per input line.

    .venv/bin/python bench/batch_load.py                      # 10,000 lines, 4 users
    .venv/bin/python bench/batch_load.py --lines 2000 --users 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from typing import Any

import aiohttp
import orjson
from loadgen import Sample, chat_body, connector, pct, stream_one
from openai import AsyncOpenAI
from systems import start_llmchat, write_result


async def chat_users(
    base_url: str, api_key: str, model: str, users: int, think_s: float, stop: asyncio.Event
) -> list[Sample]:
    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    samples: list[Sample] = []
    async with aiohttp.ClientSession(
        connector=connector(), timeout=aiohttp.ClientTimeout(total=600)
    ) as session:

        async def user(u: int) -> None:
            n = 0
            while not stop.is_set():
                body = chat_body(model, f"User {u} asks question {n}.", 64)
                samples.append(await stream_one(session, url, headers, body))
                n += 1
                await asyncio.sleep(think_s)

        await asyncio.gather(*(user(u) for u in range(users)))
    return samples


def ttft(samples: list[Sample]) -> dict[str, Any]:
    good = [s.ttft for s in samples if s.error is None and s.arrivals]
    return {
        "requests": len(samples),
        "errors": sum(1 for s in samples if s.error is not None),
        "ttft_p50_ms": round(pct(good, 50) * 1000, 1),
        "ttft_p99_ms": round(pct(good, 99) * 1000, 1),
    }


def batch_file(model: str, lines: int) -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Batch question {i}."}],
                    "max_tokens": 64,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            }
        )
        + b"\n"
        for i in range(lines)
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    system = start_llmchat()
    try:
        client = AsyncOpenAI(base_url=system.base_url, api_key=system.api_key, max_retries=0, timeout=600)
        users = (system.base_url, system.api_key, system.model, args.users, args.think_s)

        stop = asyncio.Event()
        load = asyncio.create_task(chat_users(*users, stop))
        await asyncio.sleep(args.baseline_s)
        stop.set()
        baseline = ttft(await load)

        data = batch_file(system.model, args.lines)
        began = time.perf_counter()
        upload = await client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        submitted_s = time.perf_counter() - began
        stop = asyncio.Event()
        load = asyncio.create_task(chat_users(*users, stop))
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(1)
            batch = await client.batches.retrieve(batch.id)
        stop.set()
        during = ttft(await load)
        assert batch.status == "completed", batch
        assert batch.in_progress_at is not None and batch.completed_at is not None
        assert batch.output_file_id is not None
        output = (await client.files.content(batch.output_file_id)).text.splitlines()
        ids = {json.loads(line)["custom_id"] for line in output}
        assert len(output) == args.lines and len(ids) == args.lines, "not one output line per input line"
        running_s = batch.completed_at - batch.in_progress_at
        await client.close()
        return {
            "lines": args.lines,
            "submit_s": round(submitted_s, 2),
            "run_s": running_s,
            "lines_per_s": round(args.lines / max(running_s, 1), 1),
            "chat_alone": baseline,
            "chat_during_batch": during,
        }
    finally:
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--think-s", type=float, default=1.0)
    parser.add_argument("--baseline-s", type=float, default=60.0)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    write_result("batch_load", "batch-load", users=args.users, think_s=args.think_s, results=results)


if __name__ == "__main__":
    main()
