"""When the event log counts as out of room (llmchat_common.log_space): the logic only; the
behaviour against the real broker is tests/e2e/test_disk_full.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from nats.js.errors import APIError

from llmchat_common.log_space import LogSpace, is_log_full


class Streams:
    def __init__(self, stored: int, limit: int | None) -> None:
        self.stored, self.limit, self.reads, self.down = stored, limit, 0, False

    async def stream_info(self, name: str) -> Any:
        self.reads += 1
        if self.down:
            raise TimeoutError
        return SimpleNamespace(
            config=SimpleNamespace(max_bytes=self.limit), state=SimpleNamespace(bytes=self.stored)
        )


async def test_low_when_less_than_the_reserve_is_left_under_the_limit() -> None:
    streams = Streams(stored=950, limit=1000)
    space = LogSpace(streams, "CHAT_EVENTS", reserve_bytes=100, refresh_s=0)  # type: ignore[arg-type]
    assert await space.low()
    streams.stored = 900
    assert not await space.low()  # exactly the reserve left is enough


async def test_no_limit_is_never_low() -> None:
    for limit in (None, -1, 0):
        space = LogSpace(Streams(10**12, limit), "CHAT_EVENTS", reserve_bytes=100, refresh_s=0)  # type: ignore[arg-type]
        assert not await space.low()


async def test_read_at_most_once_per_refresh_and_the_last_answer_kept_when_unreadable() -> None:
    streams = Streams(stored=999, limit=1000)
    space = LogSpace(streams, "CHAT_EVENTS", reserve_bytes=100, refresh_s=60)  # type: ignore[arg-type]
    assert await space.low() and await space.low()
    assert streams.reads == 1
    streams.down = True
    space = LogSpace(streams, "CHAT_EVENTS", reserve_bytes=100, refresh_s=0)  # type: ignore[arg-type]
    assert not await space.low()  # unknown: not refused here (a full stream still refuses)
    streams.down = False
    assert await space.low()
    streams.down = True
    assert await space.low()


def test_only_the_byte_limit_refusal_is_log_full() -> None:
    assert is_log_full(APIError(code=503, err_code=10077, description="maximum bytes exceeded"))
    assert not is_log_full(APIError(code=503, err_code=10008, description="other"))
    assert not is_log_full(TimeoutError())
