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

Replay (llmchat_common.replay) applies the same events with the same code into another schema.

Most projections read CHAT_EVENTS (`StoredEvent`); one that needs the requests themselves (the
jobs table: a request is a job before any worker says anything) reads CHAT_REQUESTS
(`StoredRequest`). Which stream, which filter subjects and how a message is decoded is a
`LogSource`; `ProjectionConsumer` is the CHAT_EVENTS form of the general `LogConsumer`.

The loop is plain nats-py, like the worker's: the batch is fetched, applied and acked by hand.
Each batch runs inside a span joined to the requests' traces, and is counted in the consumer
metrics (llmchat_common.consumer_telemetry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from opentelemetry import trace
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmchat_common import consumer_telemetry as telemetry
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
from llmchat_common.telemetry import record_error

log = logging.getLogger(__name__)

ProjectedEvent = Started | Completed | Failed | Cancelled
FETCH_TIMEOUTS = (asyncio.TimeoutError, NatsTimeoutError, FetchTimeoutError)


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
    # How often the consumer's pending count (llmchat_consumer_pending) is read from JetStream.
    pending_interval_s: float = Field(default=5.0, gt=0)


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


def stored_at(metadata: Msg.Metadata) -> float:
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


# Postgres could not write (no space left on its disk): retried like an outage, and counted
# apart for its own alert (infra/observability/prometheus/alerts.yml).
_DISK_FULL = "53100"


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (getattr(exc, "orig", None), exc.__cause__, getattr(exc.__cause__, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def is_data_error(exc: BaseException) -> bool:
    """Whether Postgres refused the events themselves, as opposed to being unreachable."""
    state = _sqlstate(exc)
    return state is not None and state[:2] in _POISON_STATES


def is_disk_full(exc: BaseException) -> bool:
    return _sqlstate(exc) == _DISK_FULL


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
        telemetry.init_metrics(self.durable)
        psub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self._source.stream)
        pending = asyncio.create_task(self._watch_pending(), name=f"{self.durable}-pending")
        try:
            while True:
                msgs = await _fetch(psub, self._settings)
                if msgs:
                    await self._handle(msgs)
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
            # nats-py 2.16: draining the connection at shutdown waits on a pull subscription's
            # queue until the drain timeout unless it is unsubscribed first.
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _handle(self, msgs: Sequence[Msg]) -> None:
        """One batch: decoded, applied in one transaction, then acked, inside the batch's span."""
        wanted = tuple(self._projection.event_types)
        decode = self._source.decode
        with telemetry.batch_span(self.durable, [m.headers for m in msgs]):
            started = time.perf_counter()
            events = [
                e
                for m in msgs
                if (e := decode(m.data, m.metadata.sequence.stream, stored_at(m.metadata), wanted))
                is not None
            ]
            if events:
                await self._apply_until_committed(events, msgs)
                if self._after_commit is not None:
                    await self._after_commit()
            # Acks only after the commit; a SIGKILL here redelivers rows that already exist.
            await asyncio.gather(*(m.ack() for m in msgs))
            self.stats.record(events, time.time())
            if events:
                seconds = time.perf_counter() - started
                telemetry.record_batch(
                    self.durable, events=len(events), seconds=seconds, lag_s=self.stats.last_lag_s
                )
                log.info(
                    "batch committed",
                    extra={"consumer": self.durable, "events": len(events), "seconds": round(seconds, 4)},
                )

    async def _watch_pending(self) -> None:
        """The consumer's backlog as JetStream counts it (not yet delivered + delivered and not
        acked, over every replica), read every `pending_interval_s`."""
        gauge = telemetry.PENDING.labels(self.durable)
        while True:
            try:
                info = await self._js.consumer_info(self._source.stream, self.durable)
                self.stats.pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
                gauge.set(self.stats.pending)
                if self.stats.pending == 0:
                    # Caught up: nothing waits, whatever the last batch's lag was.
                    telemetry.LAG.labels(self.durable).set(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away: the last value stays
                log.debug(
                    "consumer info failed", extra={"consumer": self.durable, "error": type(exc).__name__}
                )
            await asyncio.sleep(self._settings.pending_interval_s)

    async def _apply_until_committed(self, events: list[Item], msgs: Sequence[Msg]) -> None:
        delay = 0.2
        # The batch stays this consumer's while it waits on a slow database: in-progress acks
        # throughout, not only between tries.
        keepalive = asyncio.create_task(_keep_in_progress_every(msgs, self._settings.ack_wait_s / 3))
        try:
            await self._apply_retrying(events, msgs, delay)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _apply_retrying(self, events: list[Item], msgs: Sequence[Msg], delay: float) -> None:
        while True:
            try:
                skipped = await apply_skipping_poison(self._engine, self._projection, events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database is away: retry, never ack
                self.stats.errors += 1
                telemetry.ERRORS.labels(self.durable).inc()
                record_error(trace.get_current_span(), exc)
                if is_disk_full(exc):
                    telemetry.DISK_FULL.labels(self.durable).inc()
                log.log(
                    logging.ERROR if is_disk_full(exc) else logging.WARNING,
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
                continue
            if skipped:
                self.stats.skipped += len(skipped)
                telemetry.SKIPPED.labels(self.durable).inc(len(skipped))
                trace.get_current_span().add_event("events skipped", {"count": len(skipped)})
            return


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


async def _keep_in_progress_every(msgs: Sequence[Msg], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await _keep_in_progress(msgs)


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
    except FETCH_TIMEOUTS:
        return []
    if s.batch_size == 1:
        return list(first)
    try:
        more = await psub.fetch(s.batch_size - len(first), timeout=max(s.linger_s, 0.005))
    except FETCH_TIMEOUTS:
        more = []
    return [*first, *more]
