"""The edge's logic over NATS: submit a request, follow its events, cancel it, read the registry.

A request is followed through an ordered JetStream consumer on its event subjects that starts
at the first stored event (or after a client's last one), so it does not matter whether it is
created before or after the request is published, and no event is missed across reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from llmchat_chat import errors
from llmchat_chat.errors import ApiError, DeadlineExceeded, ServiceUnavailable
from llmchat_chat.observability import StreamTiming
from llmchat_chat.settings import ChatSettings
from llmchat_common import subjects
from llmchat_common.contracts import (
    AnyEvent,
    Cancelled,
    CancelReason,
    CancelRequest,
    ChatRequested,
    Completed,
    Failed,
    ModelCapabilities,
    ServedModel,
    Started,
    WorkerInfo,
    parse_event,
)
from llmchat_common.log_space import LogSpace, is_log_full
from llmchat_common.messaging import REGISTRY_TTL_S, send_cancel
from llmchat_common.publish import retrying
from llmchat_common.request_log import LoggedEvent, LogUnavailable, read_request_log
from llmchat_common.telemetry import inject, publish_traced

log = logging.getLogger(__name__)

Terminal = Completed | Failed | Cancelled
TERMINALS = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class JobState:
    """A request's lifecycle as the log has it (the latest attempt's start and terminal)."""

    started: Started | None
    terminal: Terminal | None
    # The terminal event's stream sequence: a stream resumed after it has nothing more.
    terminal_seq: int = 0

    @property
    def owner(self) -> str | None:
        event = self.terminal or self.started
        return None if event is None else event.user_id


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ModelRegistry:
    """Workers per model from the registry KV, and the models served lately from the served
    KV, cached briefly (per-request lookups). Only `ready` workers serve; a worker switching
    models shows in `workers()` with its progress, not in `live()`."""

    def __init__(
        self, kv: KeyValue, catalog: list[str], cache_s: float, served: KeyValue | None = None
    ) -> None:
        self._kv = kv
        self._served_kv = served
        self._catalog = list(catalog)
        self._cache_s = cache_s
        self._cached: list[WorkerInfo] = []
        self._served: dict[str, ServedModel] = {}
        self._cached_at = 0.0
        self._lock = asyncio.Lock()

    async def workers(self) -> list[WorkerInfo]:
        """Every worker with a fresh heartbeat, whatever its state."""
        if time.monotonic() - self._cached_at < self._cache_s:
            return self._cached
        async with self._lock:
            if time.monotonic() - self._cached_at >= self._cache_s:
                try:
                    self._cached = await self._read()
                    self._served = await self._read_served()
                except Exception as exc:  # noqa: BLE001 - serve the last view; the next call retries
                    log.warning("registry read failed", extra={"error": repr(exc)})
                self._cached_at = time.monotonic()
        return self._cached

    async def live(self) -> dict[str, list[WorkerInfo]]:
        """The workers serving each model now."""
        found: dict[str, list[WorkerInfo]] = {}
        for info in await self.workers():
            if info.state == "ready":
                found.setdefault(info.model, []).append(info)
        return found

    async def _read(self) -> list[WorkerInfo]:
        fresh_after = time.time() - REGISTRY_TTL_S
        return [info for info in await _entries(self._kv, WorkerInfo) if info.heartbeat_at >= fresh_after]

    async def _read_served(self) -> dict[str, ServedModel]:
        if self._served_kv is None:
            return {}
        return {entry.model: entry for entry in await _entries(self._served_kv, ServedModel)}

    async def served(self) -> dict[str, ServedModel]:
        """Models served lately, whose worker may be gone (a switch, a crash)."""
        await self.workers()
        return self._served

    async def context_of(self, model: str) -> int | None:
        """The model's context length as its live workers report it, else as the last one did
        (None: never served)."""
        workers = (await self.live()).get(model, [])
        if workers:
            return max(w.max_model_len for w in workers)
        lately = (await self.served()).get(model)
        return None if lately is None else lately.max_model_len

    async def capabilities_of(self, model: str) -> ModelCapabilities | None:
        """What the model can do, as its live workers say, else as the last one did (None:
        never served)."""
        workers = (await self.live()).get(model, [])
        if workers:
            return workers[0].capabilities
        lately = (await self.served()).get(model)
        return None if lately is None else lately.capabilities

    async def known(self, model: str) -> bool:
        return model in self._catalog or model in await self.live() or model in await self.served()

    async def names(self) -> list[str]:
        """The configured models, then the served ones, then those served lately."""
        return list(dict.fromkeys([*self._catalog, *await self.live(), *await self.served()]))

    @property
    def catalog(self) -> list[str]:
        return list(self._catalog)


Entry = TypeVar("Entry", WorkerInfo, ServedModel)


async def _entries(kv: KeyValue, kind: type[Entry]) -> list[Entry]:
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    found: list[Entry] = []
    for key in keys:
        # A key gone since it was listed (expired, deleted) is skipped, and so is an entry this
        # edge cannot read (another version's). A failed read raises: the caller keeps its
        # last view instead of one missing a worker.
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue
        if entry.value:
            try:
                found.append(kind.model_validate_json(entry.value))
            except ValidationError:
                log.warning("unreadable registry entry", extra={"key": key})
    return found


# See `EventFeed.next`.
READY_IN_A_ROW = 8


class EventFeed:
    """The messages of one ordered consumer, handed over by the client's callback into a queue.

    Cheaper per event than `next_msg`, which makes two tasks and a uuid for every message (the
    edge reads one message per token of every stream it serves)."""

    def __init__(self) -> None:
        self.sub: JetStreamContext.PushSubscription | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._ready_in_a_row = 0

    async def deliver(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    async def next(self, wait_s: float) -> Msg:
        """The next message; TimeoutError when none came within `wait_s` seconds.

        A message already queued is returned without waiting, but not more than
        `READY_IN_A_ROW` times in a row: awaiting a ready result does not suspend, so a stream
        whose events come faster than it writes them would never give the event loop up while
        its queue held messages, and every other request of this edge would wait for it."""
        try:
            msg = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            self._ready_in_a_row = 0
        else:
            self._ready_in_a_row += 1
            if self._ready_in_a_row >= READY_IN_A_ROW:
                self._ready_in_a_row = 0
                await asyncio.sleep(0)
            return msg
        async with asyncio.timeout(wait_s):
            return await self._queue.get()

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


async def follow_events(
    js: JetStreamContext, request_id: str, after_seq: int, *, heartbeat_s: float, retry_s: float
) -> EventFeed:
    """A feed of one request's events after stream sequence `after_seq` (0: all of them),
    through an ordered consumer. Made again while no leader answers (during an election); once
    made, it outlives its consumer: two missed heartbeats and nats-py makes a new one from the
    last event delivered (again every two heartbeats until one is made)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if after_seq > 0:
        resume = DeliverPolicy.BY_START_SEQUENCE
        config = ConsumerConfig(deliver_policy=resume, opt_start_seq=after_seq + 1)
    feed = EventFeed()
    feed.sub = await retrying(
        lambda: js.subscribe(
            subjects.request_events_filter(request_id),
            stream=subjects.EVENTS_STREAM,
            cb=feed.deliver,
            ordered_consumer=True,
            idle_heartbeat=heartbeat_s,
            config=config,
        ),
        window_s=retry_s,
        what="event log subscription",
    )
    return feed


class RequestHandle:
    """One request's events from the log, in stream order, through an ordered consumer: events
    already stored first, then live ones; a lost connection or consumer resumes where it was,
    so nothing is missed. Bounded by a time to give up."""

    def __init__(self, request_id: str, feed: EventFeed, give_up_at: float) -> None:
        self.request_id = request_id
        self._feed = feed
        self._give_up_at = give_up_at

    async def next(self, *, idle_s: float | None = None) -> LoggedEvent | None:
        """The next event; None when `idle_s` passed without one (a keep-alive is due)."""
        while True:
            remaining = self._give_up_at - time.time()
            if remaining <= 0:
                raise DeadlineExceeded("the request did not finish within its deadline")
            wait = remaining if idle_s is None else min(idle_s, remaining)
            try:
                msg = await self._feed.next(wait)
            except TimeoutError:
                if idle_s is not None and wait < remaining:
                    return None
                continue
            try:
                return LoggedEvent(msg.metadata.sequence.stream, parse_event(msg.data))
            except ValueError:
                log.error("undecodable event dropped", extra={"request_id": self.request_id})

    async def next_event(self) -> AnyEvent:
        logged = await self.next()
        assert logged is not None
        return logged.event

    async def close(self) -> None:
        await self._feed.close()


class Submitted(RequestHandle):
    """A request this edge queued and follows live: its latency is measured here."""

    def __init__(self, request: ChatRequested, feed: EventFeed, grace_s: float) -> None:
        super().__init__(request.request_id, feed, request.deadline + grace_s)
        self.request = request
        self.timing = StreamTiming(request.model, request.created_at)

    async def next(self, *, idle_s: float | None = None) -> LoggedEvent | None:
        logged = await super().next(idle_s=idle_s)
        if logged is not None:
            self.timing.saw(logged.event)
        return logged

    async def close(self) -> None:
        self.timing.end()
        await super().close()


class QueueGauge:
    """How many requests wait for a worker of a model: the worker consumer's undelivered
    messages (workers fetch only what they have slots for), read at most every `refresh_s`,
    plus what this edge queued since. Before any worker made the consumer, the subject's
    messages in the stream are all waiting."""

    def __init__(self, js: JetStreamContext, refresh_s: float) -> None:
        self._js = js
        self._refresh_s = refresh_s
        self._seen: dict[str, tuple[int, float]] = {}
        self._lock = asyncio.Lock()

    async def depth(self, model: str) -> int:
        cached = self._seen.get(model)
        if cached is not None and time.monotonic() - cached[1] < self._refresh_s:
            return cached[0]
        async with self._lock:
            cached = self._seen.get(model)
            if cached is None or time.monotonic() - cached[1] >= self._refresh_s:
                try:
                    depth = await self._read(model)
                except Exception as exc:  # noqa: BLE001 - unknown depth admits (the deadline still bounds)
                    log.warning("queue depth unknown", extra={"model": model, "error": repr(exc)})
                    depth = 0 if cached is None else cached[0]
                cached = (depth, time.monotonic())
                self._seen[model] = cached
        return cached[0]

    def queued(self, model: str) -> None:
        depth, at = self._seen.get(model, (0, time.monotonic()))
        self._seen[model] = (depth + 1, at)

    async def _read(self, model: str) -> int:
        try:
            info = await self._js.consumer_info(subjects.REQUESTS_STREAM, subjects.worker_consumer(model))
        except NotFoundError:
            subject = subjects.request_subject(model)
            stream = await self._js.stream_info(subjects.REQUESTS_STREAM, subjects_filter=subject)
            return int((stream.state.subjects or {}).get(subject, 0))
        return int(info.num_pending or 0)


class ChatService:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        registry: ModelRegistry,
        cancels: KeyValue,
        settings: ChatSettings,
    ) -> None:
        self.nc = nc
        self.js = js
        self.registry = registry
        self.cancels = cancels
        self.settings = settings
        self.queue = QueueGauge(js, settings.queue.refresh_s)
        self.log_space = LogSpace(js, subjects.EVENTS_STREAM, settings.nats.events_reserve_bytes)
        self._background: set[asyncio.Task[Any]] = set()

    async def context_of(self, model: str) -> int | None:
        return await self.registry.context_of(model)

    def deadline_for(self, timeout_s: float | None, now: float) -> float:
        timeout = self.settings.default_timeout_s if timeout_s is None else timeout_s
        return now + min(timeout, self.settings.max_timeout_s)

    async def admit(self, model: str, *, job: bool) -> None:
        """Admission control: past the model's queue bound an interactive request is refused at
        once (503 + Retry-After) instead of waiting; jobs may queue deeper. Nothing is queued
        while the event log has no room for its answer."""
        if await self.log_space.low():
            raise log_full()
        limit = self.settings.queue.jobs if job else self.settings.queue.interactive
        depth = await self.queue.depth(model)
        if depth >= limit:
            raise ServiceUnavailable(
                f"the model {model!r} is overloaded ({depth} requests waiting); retry later",
                code="model_overloaded",
                headers={"Retry-After": str(self.settings.queue.retry_after_s)},
            )

    async def submit(self, request: ChatRequested, *, follow: bool = True) -> Submitted | None:
        """Queues the request (idempotent by request id) and, with `follow`, follows its events.

        The ordered consumer that follows it reads from the request's first stored event, so it
        is created alongside the publish rather than after it: its round trip is off the time
        to the first token."""
        subscribing = asyncio.ensure_future(self._subscribe(request.request_id, 0)) if follow else None
        try:
            await self._publish_request(request)
        except Exception as exc:
            if is_log_full(exc):
                # Refused, so never stored: nothing to cancel.
                if subscribing is not None:
                    await _discard(subscribing)
                raise log_full() from exc
            if subscribing is not None:
                await _discard(subscribing)
            log.error("request publish failed", extra={"request_id": request.request_id, "error": repr(exc)})
            # Unconfirmed is not refused: the broker may have stored it and lost only the ack.
            # Cancelled (the KV entry every worker checks before running a request), a copy
            # stored after all never runs and costs nothing, while the client retries.
            self.in_background(self._cancel_unconfirmed(request.request_id))
            raise ServiceUnavailable(
                "the request could not be queued; try again",
                headers={
                    "Retry-After": str(self.settings.queue.retry_after_s),
                    "X-Request-Id": request.request_id,
                },
            ) from exc
        except BaseException:
            # Cancelled while publishing (the client left): the follower must not outlive it.
            if subscribing is not None:
                subscribing.add_done_callback(_close_later)
            raise
        self.queue.queued(request.model)
        if subscribing is None:
            return None
        try:
            sub = await subscribing
        except ServiceUnavailable:
            # Queued but nobody can follow it: the client is told to retry, so this copy
            # must not run as well.
            self.in_background(self.cancel(request.request_id, "client"))
            raise
        return Submitted(request, sub, self.settings.deadline_grace_s)

    async def _publish_request(self, request: ChatRequested) -> None:
        """Publish, again with the same message id while no stream leader answers (inside the
        stream's duplicate window, so a copy stored by an attempt whose ack was lost is not
        stored twice): a leader election takes seconds."""
        await publish_traced(
            self.js,
            subjects.request_subject(request.model),
            request.model_dump_json().encode(),
            msg_id=request.request_id,
            timeout_s=self.settings.publish_timeout_s,
            retry_s=self.settings.publish_retry_s,
            attributes={
                "llmchat.request_id": request.request_id,
                "llmchat.model": request.model,
                "llmchat.source": request.source,
            },
        )

    async def _cancel_unconfirmed(self, request_id: str) -> None:
        """Cancel a request whose publish was never confirmed, until the cancel store takes it
        (the broker may be down a while); bounded by the stream's duplicate window, after which
        the client's retry no longer matters to a stored copy anyway."""
        payload = CancelRequest(request_id=request_id, reason="client").model_dump_json().encode()
        deadline = time.monotonic() + self.settings.unconfirmed_cancel_s
        delay = 0.5
        while True:
            try:
                await self.cancels.put(request_id, payload)
                log.info("unconfirmed request cancelled", extra={"request_id": request_id})
                return
            except Exception as exc:  # noqa: BLE001 - tried again until the deadline
                if time.monotonic() + delay > deadline:
                    log.error(
                        "unconfirmed request not cancelled",
                        extra={"request_id": request_id, "error": repr(exc)},
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def follow(self, request_id: str, *, after_seq: int, give_up_at: float) -> RequestHandle:
        """The request's events after stream sequence `after_seq` (0: all), then live."""
        return RequestHandle(request_id, await self._subscribe(request_id, after_seq), give_up_at)

    async def _subscribe(self, request_id: str, after_seq: int) -> EventFeed:
        try:
            return await follow_events(
                self.js,
                request_id,
                after_seq,
                heartbeat_s=self.settings.event_heartbeat_s,
                retry_s=self.settings.publish_retry_s,
            )
        except Exception as exc:
            log.warning("event log subscription failed", extra={"request_id": request_id, "error": repr(exc)})
            raise ServiceUnavailable("the event log did not answer; try again") from exc

    async def job_state(self, request_id: str) -> JobState:
        """The latest `started` and terminal events, by direct gets of the last message on
        each of the request's subjects (no consumer, no reading of the deltas)."""

        async def last(kind: str) -> LoggedEvent | None:
            try:
                raw = await self.js.get_msg(
                    subjects.EVENTS_STREAM, subject=subjects.event_subject(request_id, kind), direct=True
                )
            except NotFoundError:
                return None
            except Exception as exc:
                log.warning("event log read failed", extra={"request_id": request_id, "error": repr(exc)})
                raise ServiceUnavailable("the event log did not answer; try again") from exc
            try:
                return LoggedEvent(int(raw.seq or 0), parse_event(raw.data or b""))
            except ValueError:
                return None

        found = await asyncio.gather(*(last(kind) for kind in ("started", *TERMINALS)))
        started = found[0].event if found[0] is not None and isinstance(found[0].event, Started) else None
        terminals = [
            e for e in found[1:] if e is not None and isinstance(e.event, Completed | Failed | Cancelled)
        ]
        if not terminals:
            return JobState(started, None)
        last_terminal = max(terminals, key=lambda e: e.event.attempt)
        assert isinstance(last_terminal.event, Completed | Failed | Cancelled)
        return JobState(started, last_terminal.event, last_terminal.stream_seq)

    async def cancel(self, request_id: str, reason: CancelReason = "client") -> None:
        """KV entry first (a worker that pulls the request later skips it), then the live signal."""
        try:
            await send_cancel(self.nc, self.cancels, request_id, reason, headers=inject({}))
        except Exception as exc:  # noqa: BLE001 - the deadline still bounds the request
            log.warning("cancel publish failed", extra={"request_id": request_id, "error": repr(exc)})

    async def cancel_requested(self, request_id: str) -> bool:
        try:
            await self.cancels.get(request_id)
        except KeyNotFoundError:
            return False
        except Exception as exc:
            raise ServiceUnavailable("the cancel store did not answer; try again") from exc
        return True

    def in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """For work that must outlive a cancelled handler (e.g. cancel on client disconnect)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_started(self, handle: Submitted) -> LoggedEvent:
        """The first event that decides the response's status: `started` or a terminal."""
        try:
            while True:
                logged = await handle.next()
                if logged is not None and isinstance(logged.event, Started | Completed | Failed | Cancelled):
                    return logged
        except DeadlineExceeded:
            self.in_background(self.cancel(handle.request_id, "deadline"))
            live = await self.registry.live()
            if not live.get(handle.request.model):
                raise ServiceUnavailable(
                    f"no worker for model {handle.request.model!r} picked up the request within its deadline",
                    code="no_worker",
                ) from None
            raise DeadlineExceeded(
                "the request was not started within its deadline (all workers busy)"
            ) from None

    async def stored_events(self, request_id: str, *, limit: int) -> list[LoggedEvent]:
        """The request's events as the log holds them, in order."""
        try:
            events = await read_request_log(self.nc, request_id, wait_s=self.settings.publish_timeout_s)
        except LogUnavailable as exc:
            raise ServiceUnavailable("the event log did not answer; try again") from exc
        return events[:limit]

    async def shutdown(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)


def _close_later(subscribing: asyncio.Future[EventFeed]) -> None:
    """For a follower whose request handler was cancelled: closed once it exists."""
    if not subscribing.cancelled() and subscribing.exception() is None:
        feed = subscribing.result()
        task = asyncio.ensure_future(feed.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future[None]] = set()


async def _discard(subscribing: asyncio.Future[EventFeed]) -> None:
    with contextlib.suppress(Exception):
        await (await subscribing).close()


def log_full() -> ServiceUnavailable:
    """The event log is at its byte limit (llmchat_common.log_space): retry once it has room."""
    return ServiceUnavailable(
        "the event log is full; retry later", code="log_full", headers={"Retry-After": "60"}
    )


def terminal_error(event: Failed | Cancelled) -> ApiError:
    if isinstance(event, Cancelled):
        if event.reason == "deadline":
            return errors.DeadlineExceeded("the request was stopped at its deadline")
        return errors.RequestCancelled("the request was cancelled")
    if event.code == "context_length_exceeded":
        return errors.ContextLengthExceeded(event.message, param="messages")
    if event.code == "invalid_request":
        return errors.InvalidRequest(event.message, param=event.param or "messages")
    if event.retriable:
        return errors.ServiceUnavailable(event.message, code=event.code)
    return errors.UpstreamFailed(event.message, code=event.code)
