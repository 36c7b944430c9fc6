"""Replay: a projection's events read back from the log with an ephemeral consumer starting at a
time, applied with the projection's own code into another schema (`schema_translate_map`), so a
replayed projection can be compared with the live one row for row; and `read_log`, the reader
that exports use too."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common import subjects
from llmchat_common.projection import (
    EVENTS_SOURCE,
    FETCH_TIMEOUTS,
    Item,
    LogSource,
    Projection,
    StoredEvent,
    apply_skipping_poison,
    stored_at,
)


@dataclass
class ReplayResult:
    events: int = 0
    batches: int = 0
    last_seq: int = 0


async def read_log(
    js: JetStreamContext,
    *,
    since: datetime,
    until: datetime | None = None,
    filters: list[str],
    batch_size: int = 1000,
    purpose: str = "read",
    end_seq: int | None = None,
    stream: str = subjects.EVENTS_STREAM,
) -> AsyncIterator[list[Msg]]:
    """The messages of `stream` stored on `filters` in [since, until) (without `until`: up to
    what the log held when the read began, `end_seq`), in log order, in batches. An ephemeral
    consumer without acks, which expires by itself (projections may not delete consumers)."""
    if end_seq is None:
        end_seq = (await js.stream_info(stream)).state.last_seq
    if end_seq == 0:
        return
    name = f"{purpose}-{uuid.uuid4().hex[:12]}"
    config = ConsumerConfig(
        name=name,
        filter_subjects=filters,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since.astimezone(UTC),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
    )
    await js.add_consumer(stream, config)
    psub = await js.pull_subscribe_bind(durable=name, stream=stream)
    until_ts = until.timestamp() if until is not None else None
    try:
        while True:
            try:
                msgs = await psub.fetch(batch_size, timeout=2.0)
            except FETCH_TIMEOUTS:
                return  # nothing after `since`, or the log ended
            within: list[Msg] = []
            done = False
            for m in msgs:
                if m.metadata.sequence.stream > end_seq or (
                    until_ts is not None and stored_at(m.metadata) >= until_ts
                ):
                    done = True
                    break
                within.append(m)
                if m.metadata.num_pending == 0:
                    done = True
                    break
            if within:
                yield within
            if done:
                return
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def replay(
    js: JetStreamContext,
    engine: AsyncEngine,
    projection: Projection[StoredEvent],
    *,
    since: datetime,
    until: datetime | None = None,
    schema_map: dict[str | None, str | None] | None = None,
    batch_size: int = 1000,
    progress: Callable[[int, int], Awaitable[None] | None] | None = None,
) -> ReplayResult:
    """`replay_source` of CHAT_EVENTS."""
    return await replay_source(
        js,
        engine,
        projection,
        EVENTS_SOURCE,
        since=since,
        until=until,
        schema_map=schema_map,
        batch_size=batch_size,
        progress=progress,
    )


async def replay_source(
    js: JetStreamContext,
    engine: AsyncEngine,
    projection: Projection[Item],
    source: LogSource[Item],
    *,
    since: datetime,
    until: datetime | None = None,
    schema_map: dict[str | None, str | None] | None = None,
    batch_size: int = 1000,
    progress: Callable[[int, int], Awaitable[None] | None] | None = None,
) -> ReplayResult:
    """Applies the projection's messages of `source` stored in [since, until) (else to what the
    stream held when the replay began) with the projection's own code, into `schema_map`'s
    schemas."""
    end_seq = (await js.stream_info(source.stream)).state.last_seq
    wanted = tuple(projection.event_types)
    result = ReplayResult()
    async for msgs in read_log(
        js,
        since=since,
        until=until,
        filters=source.filters(projection.event_types),
        batch_size=batch_size,
        purpose=f"replay-{projection.name}",
        end_seq=end_seq,
        stream=source.stream,
    ):
        events = [
            e
            for m in msgs
            if (e := source.decode(m.data, m.metadata.sequence.stream, stored_at(m.metadata), wanted))
            is not None
        ]
        result.last_seq = msgs[-1].metadata.sequence.stream
        if events:
            await apply_skipping_poison(engine, projection, events, schema_map=schema_map)
            result.events += len(events)
            result.batches += 1
        if progress is not None:
            maybe = progress(result.last_seq, end_seq)
            if maybe is not None:
                await maybe
    return result
