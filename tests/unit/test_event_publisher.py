"""The worker's event publisher: batched writes in order, the terminal after everything."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from llmchat_worker.publisher import EventPublisher


class FakeConnection:
    """Records what is published, when, and by which task (one flush task: one write)."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, float, bool]] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.fail = fail

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        if self.fail:
            raise ConnectionError("gone")
        self.tasks.append(asyncio.current_task())
        self.sent.append((subject, payload, asyncio.get_running_loop().time(), False))

    async def acked(self, subject: str, payload: bytes, headers: Any = None, timeout: float = 0) -> Any:
        self.sent.append((subject, payload, asyncio.get_running_loop().time(), True))
        return SimpleNamespace(seq=len(self.sent))  # JetStream's PubAck: the stream sequence


def publisher(conn: FakeConnection, linger_s: float) -> EventPublisher:
    js = type("JS", (), {"publish": conn.acked})()
    return EventPublisher(conn, js, linger_s)  # type: ignore[arg-type]


async def test_events_of_one_turn_go_out_together_and_in_order() -> None:
    conn = FakeConnection()
    pub = publisher(conn, 0.05)
    for i in range(5):
        pub.publish("s", str(i).encode(), {})
    assert conn.sent == []  # written at the end of the turn, not per event
    await asyncio.sleep(0.01)
    assert [p for _, p, _, _ in conn.sent] == [b"0", b"1", b"2", b"3", b"4"]
    assert len(set(conn.tasks)) == 1


async def test_a_busy_connection_writes_at_most_once_per_linger() -> None:
    conn = FakeConnection()
    pub = publisher(conn, 0.05)
    loop = asyncio.get_running_loop()
    pub.publish("s", b"a", {})
    await asyncio.sleep(0.005)  # a quiet connection: at once
    first = conn.sent[-1][2]
    pub.publish("s", b"b", {})
    await asyncio.sleep(0.005)
    pub.publish("s", b"c", {})
    assert len(conn.sent) == 1  # held: the last write was less than 50 ms ago
    while len(conn.sent) < 3:
        await asyncio.sleep(0.005)
    assert conn.sent[1][2] >= first + 0.05
    assert conn.tasks[1] is conn.tasks[2] is not conn.tasks[0]
    assert loop.time() - first < 0.5


async def test_the_terminal_goes_after_everything_queued_and_is_awaited() -> None:
    conn = FakeConnection()
    pub = publisher(conn, 10.0)  # nothing would leave by the timer within the test
    pub.publish("s", b"x", {})
    await asyncio.sleep(0.005)
    pub.publish("s", b"delta-1", {})
    pub.publish("s", b"delta-2", {})
    await pub.publish_acked("s", b"terminal", {})
    assert [(p, acked) for _, p, _, acked in conn.sent] == [
        (b"x", False),
        (b"delta-1", False),
        (b"delta-2", False),
        (b"terminal", True),
    ]


async def test_a_failed_batch_is_logged_and_the_terminal_publish_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = FakeConnection(fail=True)
    pub = publisher(conn, 0.0)
    with caplog.at_level(logging.WARNING, logger="llmchat_worker.publisher"):
        pub.publish("s", b"x", {})
        await asyncio.sleep(0.01)
    assert any(r.getMessage() == "event publish failed" for r in caplog.records)
    pub.publish("s", b"y", {})
    with pytest.raises(ConnectionError):
        await pub.publish_acked("s", b"terminal", {})
