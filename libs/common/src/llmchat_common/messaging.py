"""Broker construction and idempotent JetStream provisioning shared by every service.

FastStream's `NatsBroker` owns the connection and the typed subscribers; its underlying nats-py
client is used directly where FastStream does not reach (KV, pull loops with slot-aware fetch,
per-request subscriptions, `publish_async`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator

from faststream.nats import NatsBroker
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectInfo,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmchat_common import subjects
from llmchat_common.contracts import AuditEvent, CancelReason, CancelRequest
from llmchat_common.settings import NatsSettings

log = logging.getLogger(__name__)

REGISTRY_TTL_S = 15.0
CANCELS_TTL_S = 3600.0


def make_broker(settings: NatsSettings, *, name: str) -> NatsBroker:
    security = None
    if settings.user is not None and settings.password is not None:
        # Credentials go in the CONNECT, never in the URL (which FastStream and nats-py log).
        security = NatsUserPassword(settings.user, settings.password.get_secret_value())
    return NatsBroker(
        settings.servers,
        connect_timeout=settings.connect_timeout,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        inbox_prefix=settings.inbox_prefix,
        security=security,
        logger=log,
    )


def nats_client(broker: NatsBroker) -> Client:
    conn = broker.connection
    if conn is None:
        raise RuntimeError("broker is not connected")
    return conn


def jetstream(broker: NatsBroker) -> JetStreamContext:
    return nats_client(broker).jetstream()


def stream_configs(settings: NatsSettings) -> list[StreamConfig]:
    common = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.NEW,
        "duplicate_window": settings.duplicate_window_s,
        "max_msg_size": settings.max_msg_bytes,
        "allow_direct": True,
        "num_replicas": settings.replicas,
    }
    return [
        StreamConfig(
            name=subjects.REQUESTS_STREAM,
            subjects=[subjects.requests_wildcard()],
            max_age=settings.requests_max_age_s,
            max_bytes=settings.requests_max_bytes,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[subjects.events_wildcard()],
            max_age=settings.events_max_age_s,
            max_bytes=settings.events_max_bytes,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.NOTICES_STREAM,
            subjects=[subjects.notices_wildcard()],
            max_age=settings.events_max_age_s,
            max_bytes=settings.notices_max_bytes,
            **common,  # type: ignore[arg-type]
        ),
        StreamConfig(
            name=subjects.AUDIT_STREAM,
            subjects=[subjects.audit_wildcard()],
            max_age=settings.audit_max_age_s,
            max_bytes=settings.audit_max_bytes,
            **common,  # type: ignore[arg-type]
        ),
    ]


# nats-server reserves a stream's byte limit on its store, and refuses a stream it cannot fit.
INSUFFICIENT_STORAGE = 10047
SMALLEST_STREAM_BYTES = 1024**2


async def ensure_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create or update the streams; safe to run from every service at every start. On a
    broker whose store cannot fit the byte limits, all of them are halved together until they
    fit (a warning says so; the largest, the event log, is updated first, which frees room
    for the others), down to 1 MiB for the smallest and twice its reserve for the event log
    (below, the log would always count as full: the start fails instead)."""
    configs = sorted(stream_configs(settings), key=lambda c: -(c.max_bytes or 0))
    share = 1
    while True:
        scaled = [dataclasses.replace(c, max_bytes=(c.max_bytes or 0) // share) for c in configs]
        try:
            for config in scaled:
                await _create_or_update(js, config)
            return
        except APIError as exc:
            halved = {c.name: (c.max_bytes or 0) // 2 for c in scaled}
            if (
                exc.err_code != INSUFFICIENT_STORAGE
                or min(halved.values()) < SMALLEST_STREAM_BYTES
                or halved[subjects.EVENTS_STREAM] < 2 * settings.events_reserve_bytes
            ):
                raise
            share *= 2
            log.warning(
                "the broker cannot reserve the streams' byte limits; halved",
                extra={"max_bytes": {c.name: (c.max_bytes or 0) // share for c in configs}},
            )


async def _create_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    # Exists (perhaps with another configuration, e.g. a changed max_age): update in place.
    # An update checks only what it adds to the broker's reservation.
    await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, bucket: str, ttl_s: float, replicas: int = 1) -> KeyValue:
    config = KeyValueConfig(bucket=bucket, ttl=ttl_s, history=1, storage=StorageType.FILE, replicas=replicas)
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        return await js.key_value(bucket)


async def files_store(js: JetStreamContext, replicas: int = 1) -> ObjectStore:
    """Uploaded files and prepared batch lines: JetStream's object store, so files are
    replicated with the streams and need no other server (a Postgres large object would tie
    every read to the database, and the edge owns no tables)."""
    config = ObjectStoreConfig(bucket=subjects.FILES_BUCKET, storage=StorageType.FILE, replicas=replicas)
    try:
        return await js.create_object_store(subjects.FILES_BUCKET, config=config)
    except BadRequestError:
        return await js.object_store(subjects.FILES_BUCKET)


FILES_STREAM = f"OBJ_{subjects.FILES_BUCKET}"


async def object_chunks(js: JetStreamContext, info: ObjectInfo) -> AsyncIterator[bytes]:
    """An object's bytes, one chunk per direct get: no consumer (a user that writes the store may
    not create one: llmchat_common.launch.nats_auth), nothing gathered in memory."""
    subject = f"$O.{subjects.FILES_BUCKET}.C.{info.nuid}"
    seq = 1
    for _ in range(info.chunks or 0):
        msg = await js.get_msg(FILES_STREAM, seq=seq, subject=subject, next=True, direct=True)
        if msg.seq is None:
            raise RuntimeError(f"object {info.name!r}: a chunk has no sequence")
        seq = msg.seq + 1
        yield msg.data or b""


async def read_object(js: JetStreamContext, store: ObjectStore, name: str) -> bytes:
    info = await store.get_info(name)
    return b"".join([chunk async for chunk in object_chunks(js, info)])


async def list_objects(js: JetStreamContext) -> list[ObjectInfo]:
    """The store's objects, deleted ones left out, from the meta subjects the stream reports
    and one direct get each (no consumer, as above)."""
    meta = f"$O.{subjects.FILES_BUCKET}.M.>"
    state = (await js.stream_info(FILES_STREAM, subjects_filter=meta)).state
    found = []
    for subject in sorted((state.subjects or {}) if state is not None else {}):
        try:
            msg = await js.get_last_msg(FILES_STREAM, subject, direct=True)
        except NotFoundError:
            continue
        info = ObjectInfo.from_response(json.loads(msg.data or b"{}"))
        if not info.deleted:
            found.append(info)
    return found


async def send_cancel(
    nc: Client,
    cancels: KeyValue,
    request_id: str,
    reason: CancelReason,
    headers: dict[str, str] | None = None,
) -> None:
    """KV entry first (a worker that pulls the request later skips it), then the live signal."""
    payload = CancelRequest(request_id=request_id, reason=reason).model_dump_json().encode()
    await cancels.put(request_id, payload)
    await nc.publish(subjects.cancel_subject(request_id), payload, headers=headers)


async def registry_kv(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_kv(js, subjects.REGISTRY_BUCKET, REGISTRY_TTL_S, replicas)


async def cancels_kv(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_kv(js, subjects.CANCELS_BUCKET, CANCELS_TTL_S, replicas)


# A model whose last worker left (a switch, a crash) is still known this long: its requests
# queue until their deadline rather than being refused as unknown.
SERVED_TTL_S = 7 * 24 * 3600.0


async def served_kv(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_kv(js, subjects.SERVED_BUCKET, SERVED_TTL_S, replicas)


# Longer than any access token lives (auth refuses a longer access TTL): a denylisted token
# has expired by the time its entry does.
REVOCATIONS_TTL_S = 24 * 3600.0


async def revocations_kv(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    return await ensure_kv(js, subjects.REVOCATIONS_BUCKET, REVOCATIONS_TTL_S, replicas)


async def publish_audit(js: JetStreamContext, event: AuditEvent, msg_id: str) -> None:
    """An operator's action on the audit stream, once (`msg_id` de-duplicates a retried
    publish). A failed publish is logged, not raised: the action itself has happened."""
    try:
        await js.publish(
            subjects.audit_subject(event.action),
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id},
        )
    except Exception as exc:  # noqa: BLE001
        log.error(
            "audit event not stored", extra={"error": repr(exc), "action": event.action, "msg_id": msg_id}
        )
