"""Resume latency of a background response's stream (the Responses API, issue 17).

The platform as `make run` starts it, with two edges. For each trial a background response is
created (greedy, `ignore_eos`, `max_output_tokens`), its stream is opened at edge A
(`GET /v1/responses/{id}?stream=true`) and cut after a few events, and it is resumed at edge B
with `starting_after` the last event seen. Measured: from sending the resume to the first
event received, while the answer still runs (the stream is rendered from the log, then
followed live) and once it has ended (rendered whole from the stored events). Every resumed
stream must continue exactly after the event it was cut at and end with the whole text.

    .venv/bin/python bench/responses_resume.py                # 40 trials
    .venv/bin/python bench/responses_resume.py --trials 100 --tokens 800
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from loadgen import pct
from openai import AsyncOpenAI
from systems import start_llmchat, write_result


async def first_event_after(client: AsyncOpenAI, response_id: str, after: int) -> tuple[float, list[Any]]:
    """Seconds from sending the resume to its first event; all the events it gave."""
    began = time.perf_counter()
    stream = await client.responses.retrieve(response_id, stream=True, starting_after=after)
    first = 0.0
    events: list[Any] = []
    async for event in stream:
        if not events:
            first = time.perf_counter() - began
        events.append(event)
    return first, events


async def until_ended(client: AsyncOpenAI, response_id: str) -> None:
    for _ in range(6000):
        if (await client.responses.retrieve(response_id)).status not in ("queued", "in_progress"):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{response_id} did not end")


async def trial(a: AsyncOpenAI, b: AsyncOpenAI, model: str, tokens: int, *, ended: bool) -> float:
    created = await a.responses.create(
        model=model,
        input="Tell me about the harbour.",
        temperature=0,
        max_output_tokens=tokens,
        background=True,
        extra_body={"ignore_eos": True},
    )
    seen: list[Any] = []
    cut = await a.responses.retrieve(created.id, stream=True)
    async for event in cut:
        seen.append(event)
        if len(seen) == 6:
            break
    await cut.close()
    if ended:
        await until_ended(a, created.id)
    latency, rest = await first_event_after(b, created.id, seen[-1].sequence_number)
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events))), "a gap or a repeat"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text, "the resumed text is not the response's"
    return latency


async def run(args: argparse.Namespace) -> dict[str, Any]:
    system = start_llmchat(edges=2)
    try:
        a = AsyncOpenAI(base_url=system.base_url, api_key=system.api_key, max_retries=0, timeout=300)
        b = AsyncOpenAI(base_url=system.other_edges[0], api_key=system.api_key, max_retries=0, timeout=300)
        for _ in range(3):  # warm-up: connections, the first grammar-free prompts
            await trial(a, b, system.model, args.tokens, ended=False)
        results: dict[str, Any] = {}
        for ended in (False, True):
            latencies = [
                await trial(a, b, system.model, args.tokens, ended=ended) for _ in range(args.trials)
            ]
            results["ended" if ended else "running"] = {
                "trials": len(latencies),
                "p50_ms": round(pct(latencies, 50) * 1000, 1),
                "p90_ms": round(pct(latencies, 90) * 1000, 1),
                "p99_ms": round(pct(latencies, 99) * 1000, 1),
                "max_ms": round(max(latencies) * 1000, 1),
            }
        await a.close()
        await b.close()
        return results
    finally:
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=400, help="max_output_tokens of each response")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    write_result("responses_resume", "responses-resume", tokens=args.tokens, results=results)


if __name__ == "__main__":
    main()
