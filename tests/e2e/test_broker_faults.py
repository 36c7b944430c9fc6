"""The broker itself fails: nats-server stalls (SIGSTOP) or is killed (SIGKILL) and restarted
on the same store, with `sync_interval: always` as in compose. No request is lost, none is
doubled, none runs without its client knowing (no ghosts), and the services ride the outage
out without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI

from llmchat_common.contracts import Cancelled, Completed, Failed, is_terminal
from llmchat_common.testing.services import start_edge
from llmchat_common.testing.stack import LocalStack
from tests.conftest import MAIN_MODEL, ROOMY_LIMITS
from tests.helpers import eventually, read_request_events

# The edge gives up on an unconfirmed publish quickly here (two tries of one second).
IMPATIENT = {**ROOMY_LIMITS, "LLMCHAT_CHAT_PUBLISH_TIMEOUT_S": "1", "LLMCHAT_CHAT_PUBLISH_ATTEMPTS": "2"}


@pytest.fixture
def impatient_edge(stack: LocalStack, edge_url: str) -> Iterator[str]:
    proc, port = start_edge(stack, models=[MAIN_MODEL], extra_env=IMPATIENT, name="chat-impatient")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


async def terminals_of(stack: LocalStack, request_id: str) -> list[Any]:
    events = await read_request_events(stack.env(), request_id, wait_terminal=60)
    return [e for e in events if is_terminal(e)]  # type: ignore[arg-type]


async def test_an_unconfirmed_request_is_cancelled_not_run(
    stack: LocalStack, impatient_edge: str, auth_headers: dict[str, str]
) -> None:
    """The broker stalls while a request is published: the edge cannot confirm it and says
    503 with Retry-After. The stalled broker stores it when it wakes up, but the edge has
    cancelled it by then: it never runs and costs nothing."""
    nats = stack.process("nats")
    body = {"model": MAIN_MODEL, "messages": [{"role": "user", "content": "a ghost?"}], "max_tokens": 8}
    async with httpx.AsyncClient(base_url=impatient_edge, headers=auth_headers, timeout=30) as http:
        # The caller's key is checked against the edges' cache (Redis), not the auth service.
        warm = await http.post("/v1/chat/completions", json=body)
        assert warm.status_code == 200, warm.text
        nats.pause()
        try:
            refused = await http.post("/v1/chat/completions", json=body)
        finally:
            nats.resume()
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "service_unavailable"
    assert int(refused.headers["Retry-After"]) > 0, refused.headers
    request_id = refused.headers["X-Request-Id"]
    (outcome,) = await terminals_of(stack, request_id)
    assert isinstance(outcome, Cancelled), outcome
    assert outcome.usage.completion_tokens == 0 and outcome.text == ""


async def test_nats_server_killed_under_load_loses_and_doubles_nothing(
    stack: LocalStack, edge_url: str, api_key: str
) -> None:
    """SIGKILL nats-server while streams run, restart it on the same store: every request the
    edge accepted ends exactly once in the log, each client ends with the log's answer or a
    retryable error, usage is counted once, and the services serve again without a restart."""
    client = AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=120)
    outcomes: dict[str, tuple[str, str | None]] = {}  # request id -> (text, error)
    refused: list[int] = []
    stop = asyncio.Event()

    async def load(n: int) -> None:
        while not stop.is_set():
            text, rid = "", ""
            try:
                stream = await client.chat.completions.create(
                    model=MAIN_MODEL,
                    messages=[{"role": "user", "content": f"load {n} {time.time()}"}],
                    max_tokens=200,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                rid = stream.response.headers["X-Request-Id"]
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        text += chunk.choices[0].delta.content
                outcomes[rid] = (text, None)
            except Exception as exc:  # noqa: BLE001 - sorted below: retryable or not
                status = getattr(exc, "status_code", None)
                if not rid:
                    refused.append(status or 0)
                    await asyncio.sleep(0.5)
                else:
                    outcomes[rid] = (text, repr(exc))

    tasks = [asyncio.create_task(load(n)) for n in range(4)]
    await eventually(lambda: _true(len(outcomes) >= 4), timeout=120, what="load to flow")
    ports = (stack.ports.nats, stack.ports.nats_monitor)
    await asyncio.to_thread(stack.crash_process, "nats")
    down_at = time.monotonic()
    await asyncio.sleep(3)
    await asyncio.to_thread(stack.start_nats, *ports)
    before = len(outcomes)

    # Served again within 15 s of the restart, by the same processes.
    await eventually(lambda: _true(len(outcomes) >= before + 4), timeout=60, what="load to flow again")
    recovered = time.monotonic() - down_at
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=180)
    assert recovered < 3 + 15 + 10, recovered  # the outage, the reconnect, a 200-token answer

    # Refused before anything was accepted: only the documented 503 (and connection errors
    # while the broker was away).
    assert set(refused) <= {0, 503}, refused
    for request_id, (text, error) in outcomes.items():
        (outcome,) = await terminals_of(stack, request_id)  # exactly one, never none
        if error is None:
            assert isinstance(outcome, Completed) and text == outcome.text, (request_id, error)
        else:
            # Cut off mid-stream: the log still ends it once; the client can read it again.
            assert isinstance(outcome, Completed | Failed | Cancelled)
    await usage_once(stack, list(outcomes))


async def usage_once(stack: LocalStack, request_ids: list[str]) -> None:
    async def counted() -> bool:
        conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
        try:
            rows = await conn.fetch(
                "SELECT request_id, count(*) AS n FROM usage.requests WHERE request_id = ANY($1) "
                "GROUP BY request_id",
                request_ids,
            )
        finally:
            await conn.close()
        assert all(r["n"] == 1 for r in rows)
        return len(rows) == len(request_ids)

    await eventually(counted, timeout=120, what="one usage row per request")


async def _true(value: bool) -> bool:
    return value
