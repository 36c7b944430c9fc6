"""The worker's pull loop: a backlog comes in one fetch for the free slots, not one per request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

from llmchat_worker.handlers import RequestConsumer
from llmchat_worker.settings import WorkerSettings


@dataclass
class Meta:
    num_pending: int


@dataclass
class FakeMsg:
    n: int
    metadata: Meta


class ScriptedPull:
    """Hands out the queued messages; each says how many are left after it."""

    def __init__(self, total: int, consumer: RequestConsumer) -> None:
        self.queue = list(range(total))
        self.fetches: list[int] = []
        self.consumer = consumer

    async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
        if not self.queue:
            self.consumer._stopping.set()
            raise TimeoutError
        self.fetches.append(batch)
        taken, self.queue = self.queue[:batch], self.queue[batch:]
        left = len(self.queue)
        return [FakeMsg(n, Meta(left + len(taken) - i - 1)) for i, n in enumerate(taken)]


async def run(total: int, capacity: int) -> tuple[list[int], list[int]]:
    consumer = RequestConsumer(
        WorkerSettings(capacity=capacity, worker_id="w1"), cast(Any, None), cast(Any, None), "m", lambda: None
    )
    handled: list[int] = []
    release = asyncio.Event()

    async def handle(msg: FakeMsg) -> None:
        handled.append(msg.n)
        await release.wait()

    consumer._handle = handle  # type: ignore[method-assign,assignment]
    pull = ScriptedPull(total, consumer)
    loop = asyncio.create_task(consumer._pull_loop(cast(Any, pull)))
    while len(handled) < min(total, capacity):
        await asyncio.sleep(0.001)
    release.set()
    await asyncio.wait_for(loop, 5)
    return pull.fetches, handled


async def test_a_backlog_comes_in_one_fetch_for_the_free_slots() -> None:
    fetches, handled = await run(total=10, capacity=64)
    assert fetches == [1, 9]
    assert sorted(handled) == list(range(10))


async def test_no_more_than_the_free_slots_are_taken() -> None:
    fetches, handled = await run(total=10, capacity=4)
    assert fetches[:2] == [1, 3]
    assert sorted(handled) == list(range(10))
