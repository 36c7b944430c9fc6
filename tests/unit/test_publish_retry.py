"""Publishes ride out a leader election: the same headers again while no leader answers, any
other error at once (the real election is in tests/e2e/test_cluster.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from llmchat_common import publish
from llmchat_common.publish import publish_retrying


class FlakyStream:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []

    async def publish(
        self, subject: str, payload: bytes, *, headers: dict[str, str] | None, timeout: float
    ) -> PubAck:
        self.calls.append({"headers": headers, "timeout": timeout})
        if self.failures:
            raise self.failures.pop(0)
        return PubAck(stream="S", seq=7)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "FIRST_DELAY_S", 0.01)
    monkeypatch.setattr(publish, "MAX_DELAY_S", 0.02)


def test_a_publish_with_no_leader_is_sent_again_with_the_same_headers() -> None:
    js = FlakyStream([NoStreamResponseError(), TimeoutError(), NoStreamResponseError()])
    headers = {"Nats-Msg-Id": "r-1", "Nats-Expected-Last-Subject-Sequence": "4"}
    ack = asyncio.run(publish_retrying(js, "s", b"x", headers=headers, attempt_timeout_s=1, window_s=5))  # type: ignore[arg-type]
    assert ack.seq == 7
    assert [c["headers"] for c in js.calls] == [headers] * 4


def test_a_refusal_is_not_sent_again() -> None:
    fenced = APIError(code=400, err_code=10071, description="wrong last sequence")
    js = FlakyStream([fenced])
    with pytest.raises(APIError):
        asyncio.run(publish_retrying(js, "s", b"x", headers=None, attempt_timeout_s=1, window_s=5))  # type: ignore[arg-type]
    assert len(js.calls) == 1


def test_the_window_bounds_the_retries() -> None:
    js = FlakyStream([NoStreamResponseError()] * 1000)
    started = time.monotonic()
    with pytest.raises(NoStreamResponseError):
        asyncio.run(publish_retrying(js, "s", b"x", headers=None, attempt_timeout_s=1, window_s=0.3))  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0
    assert 3 <= len(js.calls) < 100
    # No window: once.
    once = FlakyStream([NoStreamResponseError()])
    with pytest.raises(NoStreamResponseError):
        asyncio.run(publish_retrying(once, "s", b"x", headers=None, attempt_timeout_s=1, window_s=0))  # type: ignore[arg-type]
    assert len(once.calls) == 1
