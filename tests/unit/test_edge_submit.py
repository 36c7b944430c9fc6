"""The edge's submit: the follower is created alongside the publish, and neither failure leaves
a subscription or a request that nobody follows behind."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from llmchat_chat.errors import ServiceUnavailable
from llmchat_chat.service import ChatService
from llmchat_chat.settings import ChatSettings
from llmchat_common.contracts import ChatMessage, ChatRequested, GenerationParams


class FakeSub:
    def __init__(self) -> None:
        self.unsubscribed = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


class FakeJetStream:
    def __init__(self, *, publish_fails: bool = False, subscribe_fails: bool = False) -> None:
        self.publish_fails = publish_fails
        self.subscribe_fails = subscribe_fails
        self.calls: list[str] = []
        self.sub = FakeSub()

    async def publish(self, subject: str, payload: bytes, headers: Any = None, timeout: float = 0) -> None:
        self.calls.append("publish start")
        await asyncio.sleep(0.02)  # the broker's ack
        self.calls.append("publish end")
        if self.publish_fails:
            raise ConnectionError("no ack")

    async def subscribe(self, subject: str, **kwargs: Any) -> FakeSub:
        self.calls.append("subscribe")
        await asyncio.sleep(0.01)
        if self.subscribe_fails:
            raise ConnectionError("no consumer")
        return self.sub


class Recorder:
    def __init__(self) -> None:
        self.puts: list[str] = []
        self.published: list[str] = []

    async def put(self, key: str, value: bytes) -> None:
        self.puts.append(key)

    async def publish(self, subject: str, payload: bytes, headers: Any = None) -> None:
        self.published.append(subject)


def service(js: FakeJetStream, recorder: Recorder) -> ChatService:
    return ChatService(
        cast(Any, recorder), cast(Any, js), cast(Any, None), cast(Any, recorder), ChatSettings()
    )


def request() -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id="chatcmpl-submit",
        model="tiny-random",
        messages=[ChatMessage(role="user", content="hi")],
        params=GenerationParams(),
        created_at=now,
        deadline=now + 30,
    )


async def test_the_follower_is_created_while_the_publish_waits_for_its_ack() -> None:
    js, recorder = FakeJetStream(), Recorder()
    submitted = await service(js, recorder).submit(request())
    assert submitted is not None
    assert js.calls.index("subscribe") < js.calls.index("publish end")
    assert not js.sub.unsubscribed


async def test_a_failed_publish_drops_the_follower() -> None:
    js, recorder = FakeJetStream(publish_fails=True), Recorder()
    with pytest.raises(ServiceUnavailable, match="could not be queued"):
        await service(js, recorder).submit(request())
    assert js.sub.unsubscribed
    assert recorder.puts == []  # nothing was queued: nothing to cancel


async def test_a_request_nobody_can_follow_is_cancelled() -> None:
    js, recorder = FakeJetStream(subscribe_fails=True), Recorder()
    svc = service(js, recorder)
    with pytest.raises(ServiceUnavailable, match="event log"):
        await svc.submit(request())
    await svc.shutdown()  # the cancel runs in the background
    assert recorder.puts == ["chatcmpl-submit"]
    assert recorder.published and recorder.published[0].endswith("chatcmpl-submit")


async def test_a_submit_cancelled_while_publishing_closes_its_follower() -> None:
    js, recorder = FakeJetStream(), Recorder()
    task = asyncio.create_task(service(js, recorder).submit(request()))
    while "subscribe" not in js.calls:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if js.sub.unsubscribed:
            break
        await asyncio.sleep(0.005)
    assert js.sub.unsubscribed
