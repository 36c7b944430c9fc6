"""Jobs at the edge: where a job's state comes from, and idempotent submission.

A job's state is read from the event log (the latest `started` and terminal events). Before its
first event a job exists only as a queued request: the edge remembers the jobs it queued in
Redis until their deadline (shared by every edge, so any edge answers at once), and the metrics
service's projection of the request stream answers for older ones.

An `Idempotency-Key` is claimed in Redis per user (SET NX, 24 h): the same key with the same
body names the same job; with another body it is a conflict. Without Redis a keyed submission
is refused (503) rather than risk running twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from llmchat_chat.backends import ServiceClient
from llmchat_chat.errors import Conflict, NotFound, ServiceUnavailable
from llmchat_chat.service import ChatService, JobState
from llmchat_common import subjects
from llmchat_common.contracts import ChatRequested, ResponseFacts
from llmchat_common.usage_contracts import JobQuery, JobRecord

log = logging.getLogger(__name__)


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex}"


def _pending_key(request_id: str) -> str:
    return f"llmchat:job:{request_id}"


def _idempotency_key(user_id: str, key: str) -> str:
    return f"llmchat:idem:{user_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Pending:
    """A queued job as the edge that queued it described it."""

    user_id: str
    model: str
    conversation_id: str | None
    created_at: float
    # A background response: its facts (what its Response object shows before it starts).
    response: ResponseFacts | None = None


@dataclass(frozen=True)
class Job:
    request_id: str
    state: JobState
    pending: Pending | None = None
    record: JobRecord | None = None
    # Cancelled before any worker took it (the worker that pulls it ends it `cancelled`).
    cancelled_while_queued: bool = False


class JobDirectory:
    def __init__(
        self, service: ChatService, usage: ServiceClient, redis: Redis, idempotency_ttl_s: int
    ) -> None:
        self._service = service
        self._usage = usage
        self._redis = redis
        self._ttl_s = idempotency_ttl_s

    async def remember(self, request: ChatRequested) -> None:
        pending = {
            "user_id": request.user_id,
            "model": request.model,
            "conversation_id": request.conversation_id,
            "created_at": request.created_at,
            "response": request.response.model_dump(mode="json") if request.response is not None else None,
        }
        ttl = max(1, int(request.deadline - time.time()) + 60)
        try:
            await self._redis.set(_pending_key(request.request_id), json.dumps(pending), ex=ttl)
        except Exception as exc:  # noqa: BLE001 - the metrics projection answers for it shortly
            log.warning("queued job not cached", extra={"error": type(exc).__name__})

    async def forget(self, request_id: str) -> None:
        """A queued job's note is dropped (its request was deleted)."""
        try:
            await self._redis.delete(_pending_key(request_id))
        except Exception as exc:  # noqa: BLE001 - it expires at the job's deadline
            log.warning("queued job note not dropped", extra={"error": type(exc).__name__})

    async def find(self, request_id: str, user_id: str) -> Job:
        """The caller's job, or 404 (another user's job is not found either)."""
        missing = NotFound("job not found", code="job_not_found")
        try:
            subjects.check_token(request_id)
        except ValueError:
            raise missing from None
        state = await self._service.job_state(request_id)
        if state.owner is not None:
            if state.owner != user_id:
                raise missing
            return Job(request_id, state)
        pending = await self._pending(request_id)
        if pending is not None:
            if pending.user_id != user_id:
                raise missing
            cancelled = await self._service.cancel_requested(request_id)
            return Job(request_id, state, pending=pending, cancelled_while_queued=cancelled)
        try:
            record = await self._usage.call(
                "job_get", JobQuery(user_id=user_id, request_id=request_id), JobRecord
            )
        except NotFound:
            raise missing from None
        cancelled = record.status == "queued" and await self._service.cancel_requested(request_id)
        return Job(request_id, state, record=record, cancelled_while_queued=cancelled)

    async def pending(self, request_id: str) -> Pending | None:
        """What the edge that queued the request noted (None: not noted, or gone)."""
        return await self._pending(request_id)

    async def _pending(self, request_id: str) -> Pending | None:
        try:
            raw = await self._redis.get(_pending_key(request_id))
        except Exception:  # noqa: BLE001 - ask the projection instead
            return None
        if raw is None:
            return None
        data = json.loads(raw)
        response = data.get("response")
        return Pending(
            data["user_id"],
            data["model"],
            data.get("conversation_id"),
            float(data["created_at"]),
            ResponseFacts.model_validate(response) if response is not None else None,
        )

    async def claim(
        self, user_id: str, key: str, body_hash: str, request: ChatRequested
    ) -> ChatRequested | None:
        """None: the key is ours now. Else the request the key already names (kept whole, so a
        submission that died before queueing it can be completed by the retry)."""
        redis_key = _idempotency_key(user_id, key)
        value = json.dumps({"body": body_hash, "request": request.model_dump_json()})
        try:
            if await self._redis.set(redis_key, value, nx=True, ex=self._ttl_s):
                return None
            raw = await self._redis.get(redis_key)
        except Exception as exc:
            raise ServiceUnavailable("idempotency keys cannot be checked right now; retry") from exc
        if raw is None:  # expired in between: claim again
            return await self.claim(user_id, key, body_hash, request)
        held = json.loads(raw)
        if held["body"] != body_hash:
            raise Conflict(
                "this Idempotency-Key was used with another request body",
                code="idempotency_key_reused",
            )
        return ChatRequested.model_validate_json(held["request"])

    async def unclaim(self, user_id: str, key: str) -> None:
        """The submission failed before anything was queued: the key may be used again."""
        try:
            await self._redis.delete(_idempotency_key(user_id, key))
        except Exception as exc:  # noqa: BLE001 - it expires; a retry with a new key works
            log.warning("idempotency key not released", extra={"error": type(exc).__name__})
