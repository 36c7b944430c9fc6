"""The edge's logic over NATS: submit a request, follow its events, cancel it, read the registry.

Invariant: the per-request subscription exists before the request is published, so no event of
the request can be missed on a healthy connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from llmchat_chat import errors
from llmchat_chat.errors import ApiError, DeadlineExceeded, ServiceUnavailable
from llmchat_chat.settings import ChatSettings
from llmchat_common import subjects
from llmchat_common.contracts import (
    Cancelled,
    CancelReason,
    CancelRequest,
    ChatRequested,
    Completed,
    Delta,
    Failed,
    Started,
    WorkerInfo,
    parse_event,
)
from llmchat_common.messaging import REGISTRY_TTL_S

log = logging.getLogger(__name__)

AnyEvent = Started | Delta | Completed | Failed | Cancelled


@dataclass(frozen=True)
class StoredEvent:
    stream_seq: int
    event: AnyEvent


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ModelRegistry:
    """Live workers per model from the registry KV, cached briefly (per-request lookups)."""

    def __init__(self, kv: KeyValue, catalog: list[str], cache_s: float) -> None:
        self._kv = kv
        self._catalog = list(catalog)
        self._cache_s = cache_s
        self._cached: dict[str, list[WorkerInfo]] = {}
        self._cached_at = 0.0
        self._lock = asyncio.Lock()

    async def live(self) -> dict[str, list[WorkerInfo]]:
        if time.monotonic() - self._cached_at < self._cache_s:
            return self._cached
        async with self._lock:
            if time.monotonic() - self._cached_at >= self._cache_s:
                try:
                    self._cached = await self._read()
                except Exception as exc:  # noqa: BLE001 - serve the last view; the next call retries
                    log.warning("registry read failed", extra={"error": repr(exc)})
                self._cached_at = time.monotonic()
        return self._cached

    async def _read(self) -> dict[str, list[WorkerInfo]]:
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return {}
        fresh_after = time.time() - REGISTRY_TTL_S
        found: dict[str, list[WorkerInfo]] = {}
        for key in keys:
            with contextlib.suppress(Exception):
                entry = await self._kv.get(key)
                if entry.value:
                    info = WorkerInfo.model_validate_json(entry.value)
                    if info.heartbeat_at >= fresh_after:
                        found.setdefault(info.model, []).append(info)
        return found

    async def context_of(self, model: str) -> int | None:
        """The model's context length as its live workers report it (None: no worker yet)."""
        workers = (await self.live()).get(model, [])
        return max((w.max_model_len for w in workers), default=None)

    async def known(self, model: str) -> bool:
        return model in self._catalog or model in await self.live()

    @property
    def catalog(self) -> list[str]:
        return list(self._catalog)


class RequestHandle:
    """One submitted request's event subscription, bounded by its deadline (+ grace)."""

    def __init__(self, request: ChatRequested, sub: Subscription, grace_s: float) -> None:
        self.request = request
        self._sub = sub
        self._give_up_at = request.deadline + grace_s

    @property
    def request_id(self) -> str:
        return self.request.request_id

    async def next_event(self) -> AnyEvent:
        while True:
            remaining = self._give_up_at - time.time()
            if remaining <= 0:
                raise DeadlineExceeded("the request did not finish within its deadline")
            try:
                msg = await self._sub.next_msg(timeout=remaining)
            except NatsTimeoutError:
                continue
            try:
                return parse_event(msg.data)
            except ValueError:
                log.error("undecodable event dropped", extra={"request_id": self.request_id})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


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
        self._background: set[asyncio.Task[Any]] = set()

    async def context_of(self, model: str) -> int | None:
        return await self.registry.context_of(model)

    def deadline_for(self, timeout_s: float | None, now: float) -> float:
        timeout = self.settings.default_timeout_s if timeout_s is None else timeout_s
        return now + min(timeout, self.settings.max_timeout_s)

    async def submit(self, request: ChatRequested) -> RequestHandle:
        sub = await self.nc.subscribe(subjects.request_events_filter(request.request_id))
        try:
            await self.js.publish(
                subjects.request_subject(request.model),
                request.model_dump_json().encode(),
                headers={"Nats-Msg-Id": request.request_id},
                timeout=self.settings.publish_timeout_s,
            )
        except Exception as exc:
            await sub.unsubscribe()
            log.error("request publish failed", extra={"request_id": request.request_id, "error": repr(exc)})
            raise ServiceUnavailable("the request could not be queued; try again") from exc
        return RequestHandle(request, sub, self.settings.deadline_grace_s)

    async def cancel(self, request_id: str, reason: CancelReason = "client") -> None:
        """KV entry first (a worker that pulls the request later skips it), then the live signal."""
        payload = CancelRequest(request_id=request_id, reason=reason).model_dump_json().encode()
        try:
            await self.cancels.put(request_id, payload)
            await self.nc.publish(subjects.cancel_subject(request_id), payload)
        except Exception as exc:  # noqa: BLE001 - the deadline still bounds the request
            log.warning("cancel publish failed", extra={"request_id": request_id, "error": repr(exc)})

    def in_background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """For work that must outlive a cancelled handler (e.g. cancel on client disconnect)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_started(self, handle: RequestHandle) -> AnyEvent:
        """The first event that decides the response's status: `started` or a terminal."""
        try:
            while True:
                event = await handle.next_event()
                if not isinstance(event, Delta):
                    return event
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

    async def stored_events(self, request_id: str, *, limit: int) -> list[StoredEvent]:
        """The request's events as the log holds them, in order (an ordered consumer from the
        start of the request's subjects; the log ends where nothing is pending)."""
        sub = await self.js.subscribe(
            subjects.request_events_filter(request_id),
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        events: list[StoredEvent] = []
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and (info.delivered is None or info.delivered.consumer_seq == 0):
                return events
            while len(events) < limit:
                try:
                    msg = await sub.next_msg(timeout=self.settings.publish_timeout_s)
                except NatsTimeoutError:
                    raise ServiceUnavailable("the event log did not answer; try again") from None
                with contextlib.suppress(ValueError):
                    events.append(StoredEvent(msg.metadata.sequence.stream, parse_event(msg.data)))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return events

    async def shutdown(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)


def terminal_error(event: Failed | Cancelled) -> ApiError:
    if isinstance(event, Cancelled):
        if event.reason == "deadline":
            return errors.DeadlineExceeded("the request was stopped at its deadline")
        return errors.RequestCancelled("the request was cancelled")
    if event.code == "context_length_exceeded":
        return errors.ContextLengthExceeded(event.message, param="messages")
    if event.code == "invalid_request":
        return errors.InvalidRequest(event.message, param="messages")
    if event.retriable:
        return errors.ServiceUnavailable(event.message, code=event.code)
    return errors.UpstreamFailed(event.message, code=event.code)
