"""Nothing accepted is lost: requests wait for a worker, survive a dead engine and a SIGKILLed
worker (redelivery to a fresh one), and every client gets a well-formed end."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
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
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge, start_worker, wait_for_worker
from llmchat_common.launch.stack import LocalStack
from llmchat_common.messaging import cancels_kv
from tests.conftest import FAILOVER_MODEL, MAIN_MODEL, ROOMY_LIMITS
from tests.helpers import connect_nats, eventually, read_request_events, wait_status

# Short ack_wait so redelivery after a SIGKILL happens within the test's patience.
FAST_REDELIVERY = {"LLMCHAT_WORKER_ACK_WAIT_S": "8", "LLMCHAT_WORKER_IN_PROGRESS_INTERVAL_S": "2"}
LONG_EXTRA = {"ignore_eos": True, "timeout": 600}
LONG = {"max_tokens": 1800, "temperature": 0, "extra_body": LONG_EXTRA}
# The requests whose history rows are checked: an API key's call is stored only with `store`.
STORED = {**LONG, "extra_body": {**LONG_EXTRA, "store": True}}


@pytest.fixture
def workers(stack: LocalStack) -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start_b(
    stack: LocalStack, models_dir: Any, name: str, started: list[ManagedProcess], **env: str
) -> ManagedProcess:
    proc, port = start_worker(
        stack,
        alias=FAILOVER_MODEL,
        models_dir=models_dir,
        name=name,
        extra_env={**FAST_REDELIVERY, **env},
        wait=False,
    )
    # Stopped at teardown even when it never gets ready (else it serves the next test's pool).
    started.append(proc)
    wait_for_worker(proc, port)
    return proc


USAGE_ROWS = "SELECT count(*) FROM usage.requests WHERE request_id = $1"
HISTORY_ANSWERS = "SELECT count(*) FROM history.messages WHERE request_id = $1 AND role = 'assistant'"


def stream_id(stream: Any) -> str:
    return str(stream.response.headers["X-Request-Id"])


async def stored_rows(stack: LocalStack, request_id: str) -> tuple[int, int]:
    """(usage rows, assistant answers in history) of one request, once both projections have it."""

    async def counted() -> tuple[int, int] | None:
        conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
        try:
            usage = await conn.fetchval(
                "SELECT count(*) FROM usage.requests WHERE request_id = $1", request_id
            )
            answers = await conn.fetchval(
                "SELECT count(*) FROM history.messages WHERE request_id = $1 AND role = 'assistant'",
                request_id,
            )
        finally:
            await conn.close()
        return (usage, answers) if usage and answers else None

    return await eventually(counted, timeout=30, what=f"the projections of {request_id}")


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

    async def attempt(self, request_id: str, attempt: int) -> Started:
        async def seen() -> Started | None:
            return next((e for e in self.seen if e.request_id == request_id and e.attempt == attempt), None)

        return await eventually(seen, timeout=120, what=f"attempt {attempt} of {request_id} to start")

    async def close(self) -> None:
        await self._nc.close()


# Its own bounds are the waits inside it: 264 s on a quiet machine (engine deaths, worker
# starts, 1800-token answers), over the suite's default 300 s under load.
@pytest.mark.timeout(900)
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

    # An uninterrupted run of the same request, on the main pool (same model, same engine).
    reference = await completions.create(model=MAIN_MODEL, messages=messages, **LONG)
    expected = reference.choices[0].message.content
    assert expected and answer.choices[0].message.content == expected

    # The tiny model writes 1800 tokens in seconds, so the kill must not wait on anything slow:
    # the stream starts first and shows text, then the pending request starts, and the worker
    # is killed the moment that start is seen.
    stream = await completions.create(model=FAILOVER_MODEL, messages=messages, stream=True, **STORED)
    shown, stream = await first_content(stream)
    pending = asyncio.create_task(completions.create(model=FAILOVER_MODEL, messages=messages, **STORED))
    await watcher.wait_for("worker-b2", 3)  # the survivor, the stream, then the pending request
    b2.kill()  # SIGKILL to the worker and its engine processes at once
    assert not pending.done()

    streamed = asyncio.create_task(drain(stream))
    # Its drain time is shorter than an answer (see the SIGTERM part below).
    b3 = start_b(stack, models_dir, "worker-b3", workers, LLMCHAT_WORKER_DRAIN_TIMEOUT_S="1")
    # Failover with continuation: the new attempt goes on from the stored tokens; the client's
    # stream has no gap and no repeat, and the answer is the uninterrupted one.
    rest = await asyncio.wait_for(streamed, timeout=300)
    assert shown + rest == expected
    finished = await asyncio.wait_for(pending, timeout=300)
    assert finished.usage is not None and finished.usage.completion_tokens == 1800
    assert finished.choices[0].message.content == expected
    for request_id in (finished.id, stream_id(stream)):
        events = await read_request_events(nats_env, request_id)
        resumed = [e for e in events if isinstance(e, Started) and e.attempt == 2]
        assert len(resumed) == 1
        terminal = events[-1]
        assert isinstance(terminal, Completed) and terminal.text == expected
        assert terminal.usage.completion_tokens == 1800  # the whole answer, counted once
        assert await stored_rows(stack, request_id) == (1, 1)  # one usage row, one history answer

    # -- SIGTERM: the worker stops pulling and leaves the registry; an answer that outlasts its
    # drain time is handed back with what it generated (`released`, no crash), and the next
    # worker continues it. ------------------------------------------------------------------
    draining = asyncio.create_task(completions.create(model=FAILOVER_MODEL, messages=messages, **LONG))
    await watcher.wait_for("worker-b3", 3)  # the two redelivered requests, then this one
    b3.signal(signal.SIGTERM)
    assert await asyncio.to_thread(b3.wait, 60) == 0

    async def model_b_has_no_worker() -> bool:
        async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers) as http:
            models = (await http.get("/v1/models")).json()["data"]
        return any(m["id"] == FAILOVER_MODEL and m["workers"] == 0 for m in models)

    await eventually(model_b_has_no_worker, timeout=10, what="the drained worker to leave the registry")
    assert not draining.done()
    start_b(stack, models_dir, "worker-b4", workers)
    drained = await asyncio.wait_for(draining, timeout=300)
    assert drained.usage is not None and drained.usage.completion_tokens == 1800
    assert drained.choices[0].message.content == expected
    drained_events = await read_request_events(nats_env, drained.id)
    released = [e for e in drained_events if e.type == "released"]  # type: ignore[attr-defined]
    assert len(released) == 1 and released[0].attempt == 1  # type: ignore[attr-defined]
    resumed = [e for e in drained_events if isinstance(e, Started) and e.attempt == 2]
    assert len(resumed) == 1 and resumed[0].resumed_tokens > 0

    # -- A zombie: the worker is paused (SIGSTOP) mid-answer past ack_wait, the request goes
    # to a fresh worker, then the paused one wakes up and goes on. Its late deltas are dropped
    # by every reader and the log refuses its outcome: one answer, counted once. ------------
    stream = await completions.create(model=FAILOVER_MODEL, messages=messages, stream=True, **STORED)
    shown, stream = await first_content(stream)
    zombie = workers[-1]  # worker-b4
    zombie.pause()
    try:
        streamed = asyncio.create_task(drain(stream))
        start_b(stack, models_dir, "worker-b5", workers)
        taken_over = await watcher.attempt(stream_id(stream), 2)
        assert taken_over.worker_id == "worker-b5"
    finally:
        zombie.resume()
    rest = await asyncio.wait_for(streamed, timeout=300)
    assert shown + rest == expected

    async def refused() -> bool:
        return "attempt superseded" in zombie.log_path.read_text(errors="replace")

    await eventually(refused, timeout=120, what="the woken worker's outcome to be refused")
    events = await read_request_events(nats_env, stream_id(stream))
    terminals = [e for e in events if isinstance(e, Completed | Cancelled)]
    assert len(terminals) == 1 and terminals[0].attempt == 2 and terminals[0].text == expected
    assert await stored_rows(stack, stream_id(stream)) == (1, 1)
    await watcher.close()


# Short redelivery; a request whose attempts died twice with their workers is not run again; the
# worker that takes a dead attempt over starts it again (no continuation) after a reset.
# (FAST_REDELIVERY's 8 s ack wait: CI once saw the third worker's loop give no in-progress ack
# for over 4 s while its engine started beside two others, and the stream it ran was redelivered,
# counted as a second crash, and failed as poison.)
POISON_POOL = {**FAST_REDELIVERY, "LLMCHAT_WORKER_POISON_AFTER_CRASHES": "2"}
# Admission control on this test's own edge: two waiting requests are the interactive bound,
# five the jobs' one (read from JetStream on every request).
OVERLOAD = {
    "LLMCHAT_CHAT_QUEUE__INTERACTIVE": "2",
    "LLMCHAT_CHAT_QUEUE__JOBS": "5",
    "LLMCHAT_CHAT_QUEUE__REFRESH_S": "0",
    "LLMCHAT_CHAT_QUEUE__RETRY_AFTER_S": "3",
}


@pytest.fixture
def overload_edge(stack: LocalStack, edge_url: str) -> Iterator[str]:
    proc, port = start_edge(
        stack,
        models=[FAILOVER_MODEL, MAIN_MODEL],
        extra_env={**ROOMY_LIMITS, **OVERLOAD},
        name="chat-overload",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


# Its own bounds are the waits inside it (three pool workers started and killed): the
# suite's default 300 s is too close under load.
@pytest.mark.timeout(900)
async def test_overload_poison_and_reset(
    overload_edge: str,
    api_key: str,
    stack: LocalStack,
    models_dir: Any,
    workers: list[ManagedProcess],
) -> None:
    nats_env = stack.env()
    watcher = StartedWatcher()
    await watcher.open(nats_env)
    headers = {"Authorization": f"Bearer {api_key}"}
    http = httpx.AsyncClient(base_url=overload_edge, headers=headers, timeout=60)
    client = AsyncOpenAI(base_url=f"{overload_edge}/v1", api_key=api_key, max_retries=0, timeout=600)
    completions: Any = client.chat.completions
    messages = [{"role": "user", "content": "What did the ferryman say?"}]
    short = {"model": FAILOVER_MODEL, "messages": messages, "max_tokens": 16, "temperature": 0}

    # -- Overload: no worker yet, so jobs wait; past the bound interactive requests are refused
    # at once, jobs may queue deeper, and a cancelled queued job never runs. ------------------
    admitted = [(await http.post("/v1/jobs", json=short)).json()["id"] for _ in range(2)]
    never = (await http.post("/v1/jobs", json=short)).json()["id"]
    assert (await http.delete(f"/v1/jobs/{never}")).status_code == 202
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        await completions.create(**short)
    assert time.monotonic() - began < 1.0
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "3"
    assert refused.value.body["code"] == "model_overloaded"  # type: ignore[index]
    admitted += [(await http.post("/v1/jobs", json=short)).json()["id"] for _ in range(2)]
    too_many = await http.post("/v1/jobs", json=short)
    assert too_many.status_code == 503 and too_many.headers["retry-after"] == "3"

    # Two workers at once; every admitted request completes.
    for name in ("worker-p1", "worker-p2"):
        proc, _ = start_worker(
            stack, alias=FAILOVER_MODEL, models_dir=models_dir, name=name, extra_env=POISON_POOL, wait=False
        )
        workers.append(proc)
    for job_id in admitted:
        await wait_status(http, job_id, "completed", timeout=300)
    assert (await http.get(f"/v1/jobs/{never}")).json()["status"] == "cancelled"
    never_events = await read_request_events(nats_env, never)
    assert [e.type for e in never_events] == ["cancelled"]  # type: ignore[attr-defined]

    # -- Poison: a request whose workers keep dying. The first one dies under it ... ---------
    reference = await completions.create(model=MAIN_MODEL, messages=messages, **LONG)
    expected = reference.choices[0].message.content
    poison = (await http.post("/v1/jobs", json={**short, **LONG_BODY})).json()["id"]
    first = await watcher.attempt(poison, 1)
    victims = {p.name: p for p in workers}
    victims.pop(first.worker_id).kill()
    # ... the second takes it over, with an ordinary stream beside it: both die with it.
    second = await watcher.attempt(poison, 2)
    assert second.worker_id != first.worker_id
    stream = await completions.create(model=FAILOVER_MODEL, messages=messages, stream=True, **STORED)
    # Killed once both run and the stream has some text (so that its next attempt resets it):
    # the tiny model would finish the poison's rest in seconds.
    assert (await watcher.attempt(stream_id(stream), 1)).worker_id == second.worker_id
    await asyncio.sleep(0.5)
    victims.pop(second.worker_id).kill()
    shown = ""  # whatever it showed before the kill is in what the drain reads
    streamed = asyncio.create_task(drain(stream))

    # A third worker, which starts answers over instead of continuing them.
    proc, _ = start_worker(
        stack,
        alias=FAILOVER_MODEL,
        models_dir=models_dir,
        name="worker-p3",
        extra_env={**POISON_POOL, "LLMCHAT_WORKER_CONTINUATION": "false"},
        wait=False,
    )
    workers.append(proc)
    failed = await wait_status(http, poison, "failed", timeout=300)
    assert failed["error"]["code"] == "worker_crashed"
    # The stream was reset and run again: its client sees no repeated text, and the answer.
    rest = await asyncio.wait_for(streamed, timeout=300)
    assert shown + rest == expected
    events = await read_request_events(nats_env, stream_id(stream))
    # The attempt's claim first (`fencing`), then why it starts over.
    assert [e.type for e in events if e.attempt == 2][:2] == ["started", "reset"]  # type: ignore[attr-defined]
    assert isinstance(events[-1], Completed) and events[-1].text == expected
    assert await stored_rows(stack, stream_id(stream)) == (1, 1)
    # Others are unaffected.
    after = await completions.create(**short)
    assert after.usage is not None and after.usage.completion_tokens == 16
    await http.aclose()
    await watcher.close()


LONG_BODY = {"max_tokens": 1800, "temperature": 0, "ignore_eos": True, "timeout": 600}
