"""Projections of the event log into Postgres: the consume loop history and metrics share.

Exactly once comes from Postgres, not from JetStream (DESIGN.md §3): a batch of events is
applied in one transaction whose inserts are keyed (`request_id`, `(request_id, role)`) with
`ON CONFLICT DO NOTHING`; the transaction commits, and only then are the messages acked. A crash
between commit and ack redelivers events whose rows exist, and they change nothing; so do
re-published copies and whole replays.

While Postgres is away the batch in hand is retried with backoff and its messages are kept from
redelivery with in-progress acks; nothing is acked that is not committed. An event Postgres
refuses for its content (a data or integrity error) is found by applying the batch event by
event, logged and skipped, so one bad event cannot stop a projection.

Replay reads the same events from the log with an ephemeral consumer starting at a time and
applies them with the same code into another schema (`schema_translate_map`), so a replayed
projection can be compared with the live one row for row.

Most projections read CHAT_EVENTS (`StoredEvent`); one that needs the requests themselves (the
jobs table: a request is a job before any worker says anything) reads CHAT_REQUESTS
(`StoredRequest`). Which stream, which filter subjects and how a message is decoded is a
`LogSource`; `ProjectionConsumer` and `replay` are the CHAT_EVENTS forms, `LogConsumer` and
`replay_source` the general ones.

The loop is plain nats-py, like the worker's: the batch is fetched, applied and acked by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmchat_common import subjects
from llmchat_common.contracts import (
    Cancelled,
    ChatRequested,
    Completed,
    Failed,
    Started,
    parse_event,
    parse_request,
)

log = logging.getLogger(__name__)

ProjectedEvent = Started | Completed | Failed | Cancelled
_FETCH_TIMEOUTS = (asyncio.TimeoutError, NatsTimeoutError, FetchTimeoutError)


@dataclass(frozen=True)
class StoredEvent:
    """An event as the log holds it: its stream sequence and the time JetStream stored it."""

    event: ProjectedEvent
    stream_seq: int
    stored_at: float

    @property
    def request_id(self) -> str:
        return self.event.request_id

    @property
    def type(self) -> str:
        return self.event.type

    @property
    def ts(self) -> float:
        return self.event.ts


@dataclass(frozen=True)
class StoredRequest:
    """A request as CHAT_REQUESTS holds it."""

    request: ChatRequested
    stream_seq: int
    stored_at: float

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def type(self) -> str:
        return self.request.type

    @property
    def ts(self) -> float:
        return self.request.created_at


class LogItem(Protocol):
    """What the consume loop needs of a decoded message (logging, lag)."""

    @property
    def request_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def ts(self) -> float: ...
    @property
    def stream_seq(self) -> int: ...


Item = TypeVar("Item", bound=LogItem)
Item_contra = TypeVar("Item_contra", bound=LogItem, contravariant=True)


class Projection(Protocol[Item_contra]):
    """What a service projects. `apply` runs inside the batch's transaction and must be
    idempotent: keyed inserts with ON CONFLICT DO NOTHING, updates that commute."""

    name: str
    event_types: tuple[str, ...]

    async def apply(self, conn: AsyncConnection, events: Sequence[Item_contra]) -> None: ...


class ProjectionSettings(BaseModel):
    """Composed into a service's settings (`LLMCHAT_HISTORY_PROJECTION__BATCH_SIZE=...`)."""

    batch_size: int = Field(default=500, ge=1, le=10_000)
    # How long an idle fetch waits for the first event, and how long a batch lingers for more
    # once one has arrived (bounds the lag a quiet log adds).
    idle_wait_s: float = Field(default=5.0, gt=0)
    linger_s: float = Field(default=0.02, ge=0)
    ack_wait_s: float = Field(default=30.0, gt=1)
    max_ack_pending: int = Field(default=5000, ge=1)
    retry_max_s: float = Field(default=5.0, gt=0)


def filter_subjects(event_types: Sequence[str]) -> list[str]:
    return [f"{subjects.EVENTS_PREFIX}.*.{t}" for t in event_types]


def _decode(msg_data: bytes, seq: int, stored_at: float, wanted: tuple[str, ...]) -> StoredEvent | None:
    try:
        event = parse_event(msg_data)
    except (ValidationError, ValueError) as exc:
        log.error("unreadable event skipped", extra={"stream_seq": seq, "error": type(exc).__name__})
        return None
    if event.type not in wanted or not isinstance(event, Started | Completed | Failed | Cancelled):
        return None
    return StoredEvent(event, seq, stored_at)


def _decode_request(
    msg_data: bytes, seq: int, stored_at: float, wanted: tuple[str, ...]
) -> StoredRequest | None:
    try:
        request = parse_request(msg_data)
    except (ValidationError, ValueError) as exc:
        log.error("unreadable request skipped", extra={"stream_seq": seq, "error": type(exc).__name__})
        return None
    return StoredRequest(request, seq, stored_at) if request.type in wanted else None


@dataclass(frozen=True)
class LogSource(Generic[Item]):
    """A stream of the log, the filter subjects of a projection's types on it, and the decoder
    of its messages (None: unreadable or not wanted; acked and skipped)."""

    stream: str
    filters: Callable[[Sequence[str]], list[str]]
    decode: Callable[[bytes, int, float, tuple[str, ...]], Item | None]


EVENTS_SOURCE: LogSource[StoredEvent] = LogSource(subjects.EVENTS_STREAM, filter_subjects, _decode)
# Every request, whatever its model; `requested` is the only type on that stream.
REQUESTS_SOURCE: LogSource[StoredRequest] = LogSource(
    subjects.REQUESTS_STREAM, lambda _types: [subjects.requests_wildcard()], _decode_request
)


def _stored_at(metadata: Msg.Metadata) -> float:
    """When JetStream stored the message (the metadata's timestamp)."""
    return metadata.timestamp.timestamp()


@dataclass
class ConsumerStats:
    """Progress a service exposes (metrics, benchmarks, tests)."""

    batches: int = 0
    events: int = 0
    errors: int = 0
    # Events the database refused (poison): logged and skipped.
    skipped: int = 0
    last_lag_s: float = 0.0
    pending: int = 0
    lags_s: list[float] = field(default_factory=list)

    def record(self, events: Sequence[LogItem], committed_at: float) -> None:
        self.batches += 1
        self.events += len(events)
        lags = [committed_at - e.ts for e in events]
        if lags:
            self.last_lag_s = max(lags)
            self.lags_s.extend(lags)
            del self.lags_s[:-10_000]  # a bounded window for percentiles


async def apply_batch(
    engine: AsyncEngine,
    projection: Projection[Item],
    events: Sequence[Item],
    *,
    schema_map: dict[str | None, str | None] | None = None,
) -> None:
    async with engine.begin() as conn:
        if schema_map:
            conn = await conn.execution_options(schema_translate_map=schema_map)
        await projection.apply(conn, events)


# SQLSTATE classes of errors that the same events would raise again however often they are
# retried: data exceptions (a NUL byte in text, a number out of range) and integrity violations.
_POISON_STATES = ("22", "23")


def is_data_error(exc: BaseException) -> bool:
    """Whether Postgres refused the events themselves, as opposed to being unreachable."""
    for candidate in (getattr(exc, "orig", None), exc.__cause__, getattr(exc.__cause__, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and state[:2] in _POISON_STATES:
            return True
    return False


async def apply_skipping_poison(
    engine: AsyncEngine,
    projection: Projection[Item],
    events: Sequence[Item],
    *,
    schema_map: dict[str | None, str | None] | None = None,
) -> list[Item]:
    """Applies the batch; when Postgres refuses its data, applies the events one by one (each
    in its own transaction, in log order) and skips, with an error in the log, those it refuses:
    one poisonous event must not stop the projection forever. Returns the skipped events; any
    other error (the database away) is raised for the caller to retry."""
    try:
        await apply_batch(engine, projection, events, schema_map=schema_map)
        return []
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(events) == 1:
            event = events[0]
            log.error(
                "event refused by the database; skipped",
                extra={
                    "projection": projection.name,
                    "request_id": event.request_id,
                    "type": event.type,
                    "stream_seq": events[0].stream_seq,
                    "error": type(exc).__name__,
                },
            )
            return list(events)
    skipped: list[Item] = []
    for one in events:
        skipped += await apply_skipping_poison(engine, projection, [one], schema_map=schema_map)
    return skipped


class LogConsumer(Generic[Item]):
    """The live projection: a durable pull consumer on the source's stream, filtered to the
    types the projection reads, shared by the service's replicas."""

    def __init__(
        self,
        js: JetStreamContext,
        engine: AsyncEngine,
        projection: Projection[Item],
        settings: ProjectionSettings,
        *,
        source: LogSource[Item],
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._js = js
        self._engine = engine
        self._projection = projection
        self._settings = settings
        self._source = source
        # Runs after each committed batch, before its acks (history publishes the title
        # requests the batch marked); a crash in between loses only what it would have sent.
        self._after_commit = after_commit
        self.stats = ConsumerStats()

    @property
    def durable(self) -> str:
        return f"projection-{self._projection.name}"

    async def ensure_consumer(self) -> None:
        s = self._settings
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subjects=self._source.filters(self._projection.event_types),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait_s,
            max_ack_pending=s.max_ack_pending,
            max_deliver=-1,  # an event is never given up: a poisonous one is skipped when read
        )
        await self._js.add_consumer(self._source.stream, config)

    async def run(self) -> None:
        """Until cancelled. A cancelled batch is not acked: it is redelivered to whoever runs next."""
        await self.ensure_consumer()
        psub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self._source.stream)
        wanted = tuple(self._projection.event_types)
        decode = self._source.decode
        try:
            while True:
                msgs = await _fetch(psub, self._settings)
                if not msgs:
                    continue
                events = [
                    e
                    for m in msgs
                    if (e := decode(m.data, m.metadata.sequence.stream, _stored_at(m.metadata), wanted))
                    is not None
                ]
                if events:
                    await self._apply_until_committed(events, msgs)
                    if self._after_commit is not None:
                        await self._after_commit()
                # Acks only after the commit; a SIGKILL here redelivers rows that already exist.
                await asyncio.gather(*(m.ack() for m in msgs))
                self.stats.pending = msgs[-1].metadata.num_pending
                self.stats.record(events, time.time())
        finally:
            # nats-py 2.16: draining the connection at shutdown waits on a pull subscription's
            # queue until the drain timeout unless it is unsubscribed first.
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _apply_until_committed(self, events: list[Item], msgs: Sequence[Msg]) -> None:
        delay = 0.2
        while True:
            try:
                self.stats.skipped += len(await apply_skipping_poison(self._engine, self._projection, events))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database is away: retry, never ack
                self.stats.errors += 1
                log.warning(
                    "projection batch failed; retrying",
                    extra={
                        "projection": self._projection.name,
                        "error": type(exc).__name__,
                        "events": len(events),
                    },
                )
                await _keep_in_progress(msgs)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_s)


class ProjectionConsumer(LogConsumer[StoredEvent]):
    """A projection of CHAT_EVENTS."""

    def __init__(
        self,
        js: JetStreamContext,
        engine: AsyncEngine,
        projection: Projection[StoredEvent],
        settings: ProjectionSettings,
        *,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(js, engine, projection, settings, source=EVENTS_SOURCE, after_commit=after_commit)


async def _keep_in_progress(msgs: Sequence[Msg]) -> None:
    """Resets each message's ack timer, so a long outage does not redeliver the batch in hand
    to another replica while this one still holds it."""
    for m in msgs:
        try:
            await m.in_progress()
        except Exception:  # noqa: BLE001 - NATS away too: redelivery is the fallback
            return


async def _fetch(psub: JetStreamContext.PullSubscription, s: ProjectionSettings) -> list[Msg]:
    """Waits for the first event, then takes what else is there within `linger_s`: a busy log
    gives full batches, a quiet one adds at most `linger_s` of lag."""
    try:
        first = await psub.fetch(1, timeout=s.idle_wait_s)
    except _FETCH_TIMEOUTS:
        return []
    if s.batch_size == 1:
        return list(first)
    try:
        more = await psub.fetch(s.batch_size - len(first), timeout=max(s.linger_s, 0.005))
    except _FETCH_TIMEOUTS:
        more = []
    return [*first, *more]


# -- replay -------------------------------------------------------------------------------------
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
            except _FETCH_TIMEOUTS:
                return  # nothing after `since`, or the log ended
            within: list[Msg] = []
            done = False
            for m in msgs:
                if m.metadata.sequence.stream > end_seq or (
                    until_ts is not None and _stored_at(m.metadata) >= until_ts
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
            if (e := source.decode(m.data, m.metadata.sequence.stream, _stored_at(m.metadata), wanted))
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
