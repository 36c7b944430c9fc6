"""How the worker's events reach JetStream: every request's events through one throttled batch.

Measured (bench/capacity.py, py-spy): with one publish per event, 45 % of the worker's time went
into socket writes. nats-py writes whatever is pending once per event-loop turn, and events of
different streams rarely share a turn, so each event was a write of its own (on loopback a
write costs about as much as the rest of the event's work); and `publish_async` suspends on
every call (a `wait_for` around its semaphore), so even back-to-back publishes went out one
write each, each with an ack to read back.

So events other than the terminal one are published without a per-message ack (JetStream
stores them all the same; those with a `Nats-Msg-Id` are de-duplicated by it), and they are written
together: an event goes out at once when the connection wrote nothing for `linger_s`, else it
waits until `linger_s` after the last write, with whatever other events came meanwhile (one
write for all). Under light load nothing waits; under heavy load a write carries many events.

Order: events leave in the order they were handed over (one queue, published under a lock). A
terminal event goes after everything queued before it, and its ack is awaited: NATS keeps the
order of one connection's messages, so once it is stored, the events before it have been
processed too (the durability point before the request is acked).
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.js import JetStreamContext

from llmchat_common.publish import LEADER_ELECTION_S, publish_retrying

log = logging.getLogger(__name__)
Message = tuple[str, bytes, dict[str, str] | None]


class EventPublisher:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        linger_s: float,
        ack_timeout_s: float = 5.0,
        retry_s: float = LEADER_ELECTION_S,
    ) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.retry_s = retry_s
        self.nc = nc
        self._js = js
        self._linger_s = linger_s
        self._queue: list[Message] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._last_write = float("-inf")

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        """Queue an event; it is written with the next batch (at once if the connection has
        been quiet for `linger_s`)."""
        self._queue.append((subject, payload, headers))
        if self._timer is None:
            loop = asyncio.get_running_loop()
            # Even when due now, the write waits for the end of this loop turn: events handed
            # over in the same turn share it.
            delay = max(0.0, self._last_write + self._linger_s - loop.time())
            self._timer = loop.call_later(delay, self._flush_soon)

    async def publish_acked(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> int:
        """Everything queued goes out first, then this message, whose ack is awaited (again,
        with the same headers, while no stream leader answers): its stream sequence."""
        await self.flush()
        ack = await publish_retrying(
            self._js,
            subject,
            payload,
            headers=headers,
            attempt_timeout_s=self.ack_timeout_s,
            window_s=self.retry_s,
        )
        return int(ack.seq)

    async def flush(self) -> None:
        async with self._lock:
            batch, self._queue = self._queue, []
            if not batch:
                return
            self._last_write = asyncio.get_running_loop().time()
            for subject, payload, headers in batch:
                # Appends to the connection's buffer; suspends only when that is full.
                await self.nc.publish(subject, payload, headers=headers)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The terminal event's publish (after a flush of its own) fails too and says so.
            log.warning("event publish failed", extra={"error": repr(task.exception())})

    async def close(self) -> None:
        """Writes what is queued (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()
