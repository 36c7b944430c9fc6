"""Nothing accepted is lost: requests wait for a worker, survive a dead engine and a SIGKILLed
worker (redelivery to a fresh one), and every client gets a well-formed end."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai import AsyncOpenAI

from llmchat_common import subjects
from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    ChatRequested,
    Completed,
    GenerationParams,
    Started,
    parse_event,
)
from llmchat_common.messaging import cancels_kv
from llmchat_common.testing.process import ManagedProcess
from llmchat_common.testing.services import start_worker
from llmchat_common.testing.stack import LocalStack
from tests.conftest import FAILOVER_MODEL
from tests.helpers import connect_nats, eventually, read_request_events

# Short ack_wait so redelivery after a SIGKILL happens within the test's patience.
FAST_REDELIVERY = {"LLMCHAT_WORKER_ACK_WAIT_S": "8", "LLMCHAT_WORKER_IN_PROGRESS_INTERVAL_S": "2"}
LONG = {"max_tokens": 1800, "temperature": 0, "extra_body": {"ignore_eos": True, "timeout": 600}}


@pytest.fixture
def workers(stack: LocalStack) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start_b(stack: LocalStack, models_dir: Any, name: str, started: list[ManagedProcess]) -> ManagedProcess:
    proc, _ = start_worker(
        stack, alias=FAILOVER_MODEL, models_dir=models_dir, name=name, extra_env=FAST_REDELIVERY
    )
    started.append(proc)
    return proc


async def first_content(stream: Any) -> tuple[str, Any]:
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return chunk.choices[0].delta.content, stream
    raise AssertionError("stream ended before any content")


async def drain(stream: Any) -> str:
    parts = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


class StartedWatcher:
    """Sees every `started` event live, to strike a worker while it is generating."""

    def __init__(self) -> None:
        self.seen: list[Started] = []

    async def open(self, env: Mapping[str, str]) -> None:
        self._nc = await connect_nats(env)

        async def on_msg(msg: Any) -> None:
            event = parse_event(msg.data)
            if isinstance(event, Started):
                self.seen.append(event)

        await self._nc.subscribe(f"{subjects.EVENTS_PREFIX}.*.started", cb=on_msg)

    async def wait_for(self, worker_id: str, count: int) -> list[Started]:
        async def enough() -> list[Started] | None:
            found = [e for e in self.seen if e.worker_id == worker_id]
            return found if len(found) >= count else None

        return await eventually(enough, timeout=120, what=f"{count} request(s) started on {worker_id}")

    async def close(self) -> None:
        await self._nc.close()


async def test_queue_cancel_engine_death_and_sigkill(
    edge_url: str,
    auth_headers: dict[str, str],
    api_key: str,
    stack: LocalStack,
    models_dir: Any,
    workers: list[ManagedProcess],
) -> None:
    nats_env = stack.env()
    watcher = StartedWatcher()
    await watcher.open(nats_env)
    client = AsyncOpenAI(
        base_url=f"{edge_url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=600,
    )
    # Untyped handle: the SDK's overloads do not accept a spread of shared keyword arguments.
    completions: Any = client.chat.completions
    messages = [{"role": "user", "content": "Tell me about the market on Saturday."}]

    # -- No worker for the model yet: one request cancelled while queued, one waiting. ------
    nc = await connect_nats(nats_env)
    skipped = ChatRequested(
        request_id=f"chatcmpl-queuedcancel{int(time.time() * 1000)}",
        model=FAILOVER_MODEL,
        messages=[ChatMessage(role="user", content="never runs")],
        params=GenerationParams(max_tokens=10),
        created_at=time.time(),
        deadline=time.time() + 600,
    )
    js = nc.jetstream()
    await js.publish(
        subjects.request_subject(FAILOVER_MODEL),
        skipped.model_dump_json().encode(),
        headers={"Nats-Msg-Id": skipped.request_id},
    )
    await (await cancels_kv(js)).put(skipped.request_id, b"{}")
    await nc.close()
    waiting = asyncio.create_task(
        completions.create(model=FAILOVER_MODEL, messages=messages, max_tokens=16, temperature=0)
    )
    await asyncio.sleep(1)
    assert not waiting.done()

    b1 = start_b(stack, models_dir, "worker-b1", workers)
    served = await asyncio.wait_for(waiting, timeout=120)
    assert served.usage is not None and served.usage.completion_tokens == 16
    events = await read_request_events(nats_env, skipped.request_id)
    assert len(events) == 1 and isinstance(events[0], Cancelled)  # never started
    assert events[0].usage.completion_tokens == 0

    # -- The engine dies under a request: the worker exits non-zero, the request survives. --
    survivor = asyncio.create_task(completions.create(model=FAILOVER_MODEL, messages=messages, **LONG))
    await watcher.wait_for("worker-b1", 2)  # the short request above, then this one
    engine_procs = [p for p in psutil.Process(b1.pid).children(recursive=True) if "EngineCor" in p.name()]
    assert engine_procs, "no engine process found under the worker"
    engine_procs[0].kill()

    async def b1_exited() -> bool:
        return b1.poll() is not None

    await eventually(b1_exited, timeout=60, what="the worker to exit after its engine died")
    assert b1.poll() not in (0, None)

    # -- A fresh worker takes the redelivered request; then it is SIGKILLed mid-answer. ------
    b2 = start_b(stack, models_dir, "worker-b2", workers)
    answer = await asyncio.wait_for(survivor, timeout=300)
    assert answer.usage is not None and answer.usage.completion_tokens == 1800
    survivor_events = await read_request_events(nats_env, answer.id)
    assert {e.attempt for e in survivor_events} == {1, 2}  # type: ignore[attr-defined]
    terminals = [e for e in survivor_events if isinstance(e, Completed | Cancelled)]
    assert len(terminals) == 1 and terminals[0].attempt == 2

    # The tiny model writes 1800 tokens in seconds, so the kill must not wait on anything slow:
    # the stream (the longest answer the context allows) starts first and shows text, then the
    # pending request starts, and the worker is killed the moment that start is seen.
    stream = await completions.create(
        model=FAILOVER_MODEL,
        messages=messages,
        stream=True,
        **{**LONG, "max_tokens": 1990},  # the context is 2048
    )
    _, stream = await first_content(stream)
    pending = asyncio.create_task(completions.create(model=FAILOVER_MODEL, messages=messages, **LONG))
    await watcher.wait_for("worker-b2", 3)  # the survivor, the stream, then the pending request
    b2.kill()  # SIGKILL to the worker and its engine processes at once
    assert not pending.done()

    streamed = asyncio.create_task(drain(stream))
    b3 = start_b(stack, models_dir, "worker-b3", workers)
    # The streaming client already had text from the dead attempt: it gets a clean error,
    # never a hang and never repeated text.
    with pytest.raises(openai.APIError, match="worker"):
        await asyncio.wait_for(streamed, timeout=300)
    finished = await asyncio.wait_for(pending, timeout=300)
    assert finished.usage is not None and finished.usage.completion_tokens == 1800
    assert finished.choices[0].message.content == answer.choices[0].message.content  # greedy, same prompt
    pending_events = await read_request_events(nats_env, finished.id)
    assert any(isinstance(e, Started) and e.attempt == 2 for e in pending_events)

    # -- SIGTERM drains: the running answer completes, then the worker leaves the registry. --
    draining = asyncio.create_task(completions.create(model=FAILOVER_MODEL, messages=messages, **LONG))
    await watcher.wait_for("worker-b3", 3)  # the two redelivered requests, then this one
    b3.signal(signal.SIGTERM)
    drained = await asyncio.wait_for(draining, timeout=300)
    assert drained.usage is not None and drained.usage.completion_tokens == 1800
    assert await asyncio.to_thread(b3.wait, 60) == 0

    async def model_b_has_no_worker() -> bool:
        async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers) as http:
            models = (await http.get("/v1/models")).json()["data"]
        return any(m["id"] == FAILOVER_MODEL and m["workers"] == 0 for m in models)

    await eventually(model_b_has_no_worker, timeout=10, what="the drained worker to leave the registry")
    await watcher.close()
