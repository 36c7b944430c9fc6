"""Test helpers that talk to the real broker and processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from llmchat_common import subjects
from llmchat_common.contracts import parse_event

T = TypeVar("T")


async def read_request_events(nats_url: str, request_id: str, *, wait_terminal: float = 30.0) -> list[object]:
    """All stored events of one request, in stream order, waiting until a terminal one is there."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + wait_terminal
        while True:
            sub = await js.pull_subscribe(
                subjects.request_events_filter(request_id),
                durable=None,
                stream=subjects.EVENTS_STREAM,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
            )
            events: list[object] = []
            while True:
                try:
                    msgs = await sub.fetch(batch=256, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                for msg in msgs:
                    events.append(parse_event(msg.data))
                    await msg.ack()
            await sub.unsubscribe()
            if any(getattr(e, "type", "") in ("completed", "failed", "cancelled") for e in events):
                return events
            if time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def worker_status(url: str) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{url}/status", timeout=5)
        data: dict[str, object] = resp.json()
        return data
