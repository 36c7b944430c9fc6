"""Fencing against the real broker: the log itself refuses a superseded attempt's claim and
outcome (`llmchat_worker.fencing`), so at most one terminal event per request is ever stored.
Published with the worker's own sink and publisher, as the worker's NATS user; the paused
worker of a real engine is in test_failover. And a hole in an attempt's deltas: the client
still ends with the terminal event's text."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from openai import AsyncOpenAI

from llmchat_common import subjects
from llmchat_common.contracts import (
    ChatMessage,
    ChatRequested,
    Completed,
    Delta,
    Failed,
    GenerationParams,
    ServedModel,
    Started,
    Timings,
    Usage,
    is_terminal,
    parse_request,
)
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.stack import LocalStack
from llmchat_common.messaging import served_kv
from llmchat_common.request_log import progress_of, read_request_log
from llmchat_worker.advisories import _publish_exhausted
from llmchat_worker.errors import Superseded
from llmchat_worker.fencing import Fence, claim_of
from llmchat_worker.handlers import NatsEventSink
from llmchat_worker.publisher import EventPublisher
from tests.helpers import connect_nats, eventually

REQUESTS = subjects.REQUESTS_STREAM


@pytest.fixture
async def worker_nc(stack: LocalStack, history_service: ManagedProcess) -> AsyncIterator[Client]:
    # The history service creates the streams as it starts.
    nc = await connect_nats(stack.env("worker"))
    yield nc
    await nc.close()


def request() -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id=f"chatcmpl-fence{uuid.uuid4().hex[:12]}",
        model="fence-test",
        messages=[ChatMessage(role="user", content="who answers?")],
        params=GenerationParams(max_tokens=4),
        created_at=now,
        deadline=now + 60,
    )


class Attempt:
    """One attempt's events, as a worker's runner publishes them."""

    def __init__(self, nc: Client, req: ChatRequested, attempt: int, position: int) -> None:
        self.nc, self.req, self.attempt, self.seq = nc, req, attempt, 0
        self.publisher = EventPublisher(nc, nc.jetstream(), linger_s=0.0)
        self.sink = NatsEventSink(self.publisher).for_attempt({}, Fence(req.request_id, position, attempt))

    def _base(self) -> dict[str, Any]:
        self.seq += 1
        return {
            "request_id": self.req.request_id,
            "attempt": self.attempt,
            "seq": self.seq - 1,
            "worker_id": f"w{self.attempt}",
            "ts": time.time(),
        }

    async def start(self) -> None:
        await self.sink.emit(Started(**self._base(), queue_ms=0.0, prompt_tokens=3))

    async def delta(self, text: str) -> None:
        await self.sink.emit(Delta(**self._base(), text=text, token_ids=[1]))
        # Unacked, as the worker sends deltas: stored before the test reads the log on.
        await self.publisher.flush()
        await self.nc.flush()
        await asyncio.sleep(0.05)

    async def complete(self, text: str) -> None:
        usage = Usage(prompt_tokens=3, completion_tokens=1)
        await self.sink.emit_terminal(
            Completed(**self._base(), finish_reason="stop", text=text, usage=usage, timings=Timings())
        )


async def position(nc: Client, request_id: str) -> int:
    logged = await read_request_log(nc, request_id)
    return logged[-1].stream_seq if logged else 0


async def terminals(nc: Client, request_id: str) -> list[object]:
    return [e.event for e in await read_request_log(nc, request_id) if is_terminal(e.event)]


async def test_a_paused_attempt_cannot_end_a_request_a_newer_one_took_over(worker_nc: Client) -> None:
    req = request()
    zombie = Attempt(worker_nc, req, 1, 0)
    await zombie.start()
    await zombie.delta("old ")
    # Redelivered: the next attempt reads the log, then claims the request.
    newer = Attempt(worker_nc, req, 2, await position(worker_nc, req.request_id))
    await newer.start()
    # The paused worker wakes up: its deltas are stored (readers drop them), its end is refused.
    await zombie.delta("still talking ")
    with pytest.raises(Superseded):
        await zombie.complete("old still talking")
    await newer.delta("new")
    await newer.complete("new")
    (outcome,) = await terminals(worker_nc, req.request_id)
    assert isinstance(outcome, Completed) and (outcome.attempt, outcome.text) == (2, "new")
    progress = progress_of(await read_request_log(worker_nc, req.request_id))
    assert progress.finished and progress.attempt == 2 and progress.broken is None


async def test_a_claim_goes_through_an_older_attempts_deltas(worker_nc: Client) -> None:
    req = request()
    zombie = Attempt(worker_nc, req, 1, 0)
    await zombie.start()
    # The newer attempt read the log; the woken older one streams on before the claim lands.
    newer = Attempt(worker_nc, req, 2, await position(worker_nc, req.request_id))
    await zombie.delta("still ")
    await zombie.delta("talking ")
    await newer.start()  # refused once, then claimed from where the log ends
    with pytest.raises(Superseded):
        await zombie.complete("still talking")
    await newer.complete("new")
    (outcome,) = await terminals(worker_nc, req.request_id)
    assert isinstance(outcome, Completed) and outcome.attempt == 2


async def test_no_attempt_starts_once_the_request_has_ended(worker_nc: Client) -> None:
    req = request()
    first = Attempt(worker_nc, req, 1, 0)
    await first.start()
    # The next attempt read the log before the first one ended...
    stale = Attempt(worker_nc, req, 2, await position(worker_nc, req.request_id))
    await first.complete("done")
    # ...so its claim is refused, and the request keeps the one outcome.
    with pytest.raises(Superseded):
        await stale.start()
    # A claim that saw nothing of an existing log is refused too (a first attempt's position is 0).
    with pytest.raises(Superseded):
        await Attempt(worker_nc, req, 3, 0).start()
    assert [t.attempt for t in await terminals(worker_nc, req.request_id)] == [1]  # type: ignore[attr-defined]


async def test_an_attempt_that_ends_at_once_claims_first(worker_nc: Client) -> None:
    req = request()
    zombie = Attempt(worker_nc, req, 1, 0)
    await zombie.start()
    # Attempt 2 ends the request at once (e.g. poison): its claim comes first, so the paused
    # first attempt cannot add a second outcome afterwards.
    later = Attempt(worker_nc, req, 2, await position(worker_nc, req.request_id))
    failed = Failed(**later._base(), code="worker_crashed", message="stopped")
    await later.sink.emit(claim_of(failed))
    await later.sink.emit_terminal(failed.model_copy(update={"seq": 1}))
    with pytest.raises(Superseded):
        await zombie.complete("late")
    (outcome,) = await terminals(worker_nc, req.request_id)
    assert isinstance(outcome, Failed) and outcome.attempt == 2


async def test_the_max_deliveries_outcome_is_fenced_too(worker_nc: Client) -> None:
    js = worker_nc.jetstream()
    # Exhausted while its last attempt was paused: the log's own attempt ends it; the paused
    # one wakes up to a refusal.
    req = request()
    zombie = Attempt(worker_nc, req, 3, 0)
    await zombie.start()
    await _publish_exhausted(js, req, 3)
    await _publish_exhausted(js, req, 3)  # every worker of the model hears the advisory
    with pytest.raises(Superseded):
        await zombie.complete("late")
    (outcome,) = await terminals(worker_nc, req.request_id)
    assert isinstance(outcome, Failed) and (outcome.code, outcome.attempt) == ("max_deliveries", 4)
    # A request that did end (its ack was lost) is not failed afterwards.
    done = request()
    finished = Attempt(worker_nc, done, 1, 0)
    await finished.start()
    await finished.complete("fine")
    await _publish_exhausted(js, done, 1)
    (outcome,) = await terminals(worker_nc, done.request_id)
    assert isinstance(outcome, Completed)


async def test_a_lost_delta_is_filled_from_the_terminal_event(
    stack: LocalStack, edge_url: str, api_key: str
) -> None:
    """Injected delta loss: the test is the model's worker, and one of its deltas never reaches
    the log (as when the connection breaks under an unacked publish). The client's streamed
    answer still ends as the terminal event's text, through the real edge and OpenAI's SDK."""
    model = f"gap-test-{uuid.uuid4().hex[:8]}"
    nc = await connect_nats(stack.env())
    try:
        js = nc.jetstream()
        served = ServedModel(model=model, max_model_len=2048, seen_at=time.time())
        await (await served_kv(js)).put(subjects.served_key(model), served.model_dump_json().encode())
        requests = await js.pull_subscribe(subjects.request_subject(model), durable=None, stream=REQUESTS)

        async def serve() -> str:
            (msg,) = await requests.fetch(1, timeout=60)
            await msg.ack()
            req = parse_request(msg.data)
            worker = Attempt(nc, req, 1, 0)
            await worker.start()
            await worker.delta("The harbour ")
            worker.seq += 1  # "opens at " is lost
            await worker.delta("dawn.")
            await worker.complete("The harbour opens at dawn.")
            return req.request_id

        client = AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=60)

        async def listed() -> bool:
            return model in {m.id async for m in client.models.list()}

        await eventually(listed, timeout=30, what="the edge to know the model")
        serving = asyncio.create_task(serve())
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "When?"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        request_id = await serving
        assert text == "The harbour opens at dawn."
        # The log itself has the hole: every replay meets it too, and is filled the same way.
        seqs = [e.event.seq for e in await read_request_log(nc, request_id) if isinstance(e.event, Delta)]
        assert seqs == [1, 3]
    finally:
        await nc.close()
