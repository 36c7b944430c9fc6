"""The broker stalls (SIGSTOP) while a request is published: none runs without its client
knowing (no ghosts). nats-server SIGKILLed under load and restarted on its store (with
`sync_interval: always`, as in compose) is in bench/chaos.py's short run (test_chaos.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from llmchat_common.contracts import Cancelled, is_terminal
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL, ROOMY_LIMITS
from tests.helpers import read_request_events

# The edge gives up on an unconfirmed publish quickly here (two tries of one second).
IMPATIENT = {**ROOMY_LIMITS, "LLMCHAT_CHAT_PUBLISH_TIMEOUT_S": "1", "LLMCHAT_CHAT_PUBLISH_RETRY_S": "1.5"}


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
            # CI once saw this request answered at once, as if the broker had not stopped (not
            # reproduced since): say so plainly if it happens again.
            status = psutil.Process(nats.pid).status()
            assert status == psutil.STATUS_STOPPED, f"nats-server {nats.pid} did not stop: {status}"
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


async def _true(value: bool) -> bool:
    return value
