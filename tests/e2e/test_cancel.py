"""A client that disconnects mid-stream frees its engine slot; the log says `cancelled`."""

from __future__ import annotations

import httpx

from llmchat_common.contracts import Cancelled, Delta
from llmchat_common.testing.stack import LocalStack
from tests.conftest import Worker
from tests.helpers import eventually, read_request_events, worker_status


async def test_disconnect_cancels_and_frees_the_engine(
    edge_url: str, worker: Worker, stack: LocalStack
) -> None:
    body = {
        "model": "tiny-random",
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 1900,
        "stream": True,
        "ignore_eos": True,
    }
    chunks = 0
    async with (
        httpx.AsyncClient(base_url=edge_url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        request_id = resp.headers["x-request-id"]
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and '"content"' in line:
                chunks += 1
            if chunks >= 5:
                status = await worker_status(worker.url)
                assert int(status["running"]) >= 1  # type: ignore[call-overload]
                break
    # Leaving the block closed the connection mid-stream.

    async def engine_idle() -> bool:
        running = (await worker_status(worker.url))["running"]
        return running == 0

    await eventually(engine_idle, timeout=5, what="the engine to release the request")
    events = await read_request_events(stack.env()["LLMCHAT_NATS_URL"], request_id)
    terminal = events[-1]
    assert isinstance(terminal, Cancelled), terminal
    assert terminal.reason == "client"
    deltas = [e for e in events if isinstance(e, Delta)]
    assert 0 < terminal.usage.completion_tokens < 1900
    assert terminal.usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
    assert terminal.usage.prompt_tokens > 0
