"""Erasing requests from the log: deleting a conversation (or a user) must forget what was said,
not only hide it.

A request lives in two streams:
- CHAT_REQUESTS, one message on its model's subject (`chat.v1.requests.<model>`), shared with
  every other request of that model: it is deleted by its sequence, which its events carry
  (`request_seq`, from the worker that read it).
- CHAT_EVENTS, every event on the request's own subjects (`chat.v1.events.<rid>.*`): each is
  deleted by its sequence too.
JetStream overwrites a deleted message's bytes (a secure delete), so the prompt and the answer
are gone from the store's files too, not only from what the stream serves.

Idempotent: a request already forgotten, or never stored, is a no-op. Only ended requests are
erased (`forget_requests`); one still running is erased when its end is seen. Not covered: a
request of an erased user that runs outside any conversation and ends after the erasure (the
user is disabled first, so only those already admitted).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from llmchat_common import subjects
from llmchat_common.contracts import TERMINAL_TYPES, AnyEvent, parse_event, parse_request
from llmchat_common.request_log import LoggedEvent, read_request_log

log = logging.getLogger(__name__)

# What a service that erases is given: `forget_requests` bound to its connection.
Forget = Callable[[list[str]], Awaitable[int]]


async def _last(js: JetStreamContext, request_id: str, kind: str) -> AnyEvent | None:
    try:
        raw = await js.get_last_msg(
            subjects.EVENTS_STREAM, subjects.event_subject(request_id, kind), direct=True
        )
    except NotFoundError:
        return None
    try:
        return parse_event(raw.data or b"")
    except (ValidationError, ValueError):
        return None


async def outcome(js: JetStreamContext, request_id: str) -> tuple[bool, int | None]:
    """Whether the request has ended (its terminal event is stored), and where its message is
    in CHAT_REQUESTS (`request_seq`, from its terminal or its `started`)."""
    ended, seq = False, None
    for kind in (*sorted(TERMINAL_TYPES), "started"):
        event = await _last(js, request_id, kind)
        if event is None:
            continue
        ended = ended or kind != "started"
        seq = seq if seq is not None else getattr(event, "request_seq", None)
    return ended, seq


async def forget_requests(nc: Client, request_ids: Iterable[str]) -> int:
    """Deletes each ended request's message and every one of its events; how many it erased
    (`erase`, with the request's events read from the log)."""

    async def events_of(request_id: str) -> list[LoggedEvent]:
        return await read_request_log(nc, request_id)

    return await erase(nc.jetstream(), events_of, request_ids)


async def erase(
    js: JetStreamContext,
    events_of: Callable[[str], Awaitable[list[LoggedEvent]]],
    request_ids: Iterable[str],
) -> int:
    """Each message is deleted on its own, which JetStream does securely (its bytes overwritten
    in the store's files): a purge only marks messages deleted, and their bytes stay in the
    block files until the block is compacted. A last purge of the request's subjects takes any
    event that came meanwhile or that this version cannot read.

    A request that has not ended is left alone: erasing the log under a running attempt would
    fence that attempt out (`fencing`: its terminal event expects its own `started`) and have
    it run again. Whoever erases learns of its end later and calls again (the history
    projection does, for the events of a deleted conversation)."""
    erased = 0
    # An id that is no subject token was never stored under one (`check_token`): nothing to do.
    for request_id in [r for r in dict.fromkeys(request_ids) if subjects.is_token(r)]:
        ended, seq = await outcome(js, request_id)
        if not ended:
            continue
        if seq is not None and await _holds(js, seq, request_id):
            await _delete(js, subjects.REQUESTS_STREAM, seq)
        for logged in await events_of(request_id):
            await _delete(js, subjects.EVENTS_STREAM, logged.stream_seq)
        await js.purge_stream(subjects.EVENTS_STREAM, subject=subjects.request_events_filter(request_id))
        erased += 1
    if erased:
        log.info("requests forgotten", extra={"requests": erased})
    return erased


async def _delete(js: JetStreamContext, stream: str, seq: int) -> None:
    # Gone meanwhile (another erasure, max_age): nothing to do.
    with contextlib.suppress(NotFoundError):
        await js.delete_msg(stream, seq)


async def _holds(js: JetStreamContext, seq: int, request_id: str) -> bool:
    """Whether CHAT_REQUESTS still holds this request at `seq` (not forgotten before, not aged
    out, and never another request's message)."""
    try:
        raw = await js.get_msg(subjects.REQUESTS_STREAM, seq, direct=True)
    except NotFoundError:
        return False
    try:
        return parse_request(raw.data or b"").request_id == request_id
    except (ValidationError, ValueError):
        return False
