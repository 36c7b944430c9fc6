"""A client that disconnects mid-stream frees its engine slot; the log says `cancelled`."""

from __future__ import annotations

import time

import httpx
import nats
import pytest

from llmchat_common import subjects
from llmchat_common.contracts import Cancelled, Completed, Delta, parse_request
from llmchat_common.launch.stack import LocalStack
from llmchat_common.messaging import cancels_kv
from tests.conftest import IDLE_MODEL, Worker
from tests.helpers import connect_nats, eventually, left_too_late, read_request_events, worker_status


async def test_disconnect_cancels_and_frees_the_engine(
    edge_url: str, auth_headers: dict[str, str], worker: Worker, stack: LocalStack
) -> None:
    body = {
        "model": "tiny-random",
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 1900,
        "stream": True,
        "ignore_eos": True,
    }
    for _ in range(3):
        chunks = 0
        async with (
            httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200
            request_id = resp.headers["x-request-id"]
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    chunks += 1
                if chunks >= 5:
                    break
        # Leaving the block closed the connection mid-stream.
        left_at = time.time()

        async def engine_idle() -> bool:
            running = (await worker_status(worker.url))["running"]
            return running == 0

        await eventually(engine_idle, timeout=5, what="the engine to release the request")
        events = await read_request_events(stack.env(), request_id)
        terminal = events[-1]
        if isinstance(terminal, Completed) and left_too_late(terminal.ts, left_at):
            continue
        assert isinstance(terminal, Cancelled), terminal
        assert terminal.reason == "client"
        deltas = [e for e in events if isinstance(e, Delta)]
        assert 0 < terminal.usage.completion_tokens < 1900
        assert terminal.usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
        assert terminal.usage.prompt_tokens > 0
        return
    pytest.fail("the test client never left before the answer ended (3 tries): too slow to test")


async def test_disconnect_while_queued_cancels_before_any_worker_runs_it(
    edge_url: str, auth_headers: dict[str, str], stack: LocalStack
) -> None:
    """The client leaves before a worker picked its request up: the KV cancel entry is written,
    so whichever worker pulls it later skips it."""
    subject = subjects.request_subject(IDLE_MODEL)
    body = {
        "model": IDLE_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "timeout": 300,
    }
    nc = await connect_nats(stack.env())
    try:
        js = nc.jetstream()
        async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/v1/chat/completions", json=body, timeout=2)

        async def queued_id() -> str | None:
            try:
                msg = await js.get_last_msg(subjects.REQUESTS_STREAM, subject)
            except nats.js.errors.NotFoundError:
                return None
            return parse_request(msg.data or b"").request_id

        request_id = await eventually(queued_id, timeout=5, what="the queued request")
        cancels = await cancels_kv(js)

        async def cancel_recorded() -> bool:
            try:
                await cancels.get(request_id)
            except nats.js.errors.KeyNotFoundError:
                return False
            return True

        await eventually(cancel_recorded, timeout=5, what="the cancel entry")
    finally:
        await nc.close()
