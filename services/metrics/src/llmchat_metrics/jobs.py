"""The jobs projection: one `usage.jobs` row per chat request (and legacy completion), merged
from its `requested` message (CHAT_REQUESTS, its own durable consumer) and its `started` and
terminal events (CHAT_EVENTS, another one). Title requests (kind `title`) are not jobs.

The two consumers run independently, so a row may be made by any of its messages first (an
event before its request, a terminal before its `started`), and any message may come again
(redelivery, a re-published copy, a replay over live data). The merge is therefore written so
that the result does not depend on that:

- the request's facts (user, key, model, conversation, source, trace, created_at) are the same
  on every message of a request (events copy them from the request): the first non-empty value
  stays;
- the status only moves up its rank (queued 0 < running 1 < terminal 2); the status and the
  terminal fields (finish, tokens, error) come with the higher rank, so a late `requested` or
  `started` never overwrites an end, and a second copy of the end changes nothing;
- `started_at` is the earliest start, `attempts` the highest attempt seen.

`merge` states these rules once in Python (a batch is folded per request id first: Postgres
refuses to update one row twice in one statement) and `_UPSERT` repeats them in SQL for the
row already stored; the unit tests hold the two to every arrival order.

The status mapping is `job_format.status_of` of the edge: a request cancelled at its deadline
is a failed job (`deadline_exceeded`), any other cancel a cancelled one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from llmchat_common.contracts import Cancelled, ChatRequested, Completed, Failed, Started
from llmchat_common.projection import StoredEvent, StoredRequest
from llmchat_metrics.models import JOBS

Row = dict[str, Any]

RANK = {"queued": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}
# Copied from the request onto its events: the first non-empty value stays.
FACTS = ("user_id", "api_key_id", "model", "conversation_id", "source", "trace_id")
# Set by the terminal event only; they move with the status.
TERMINAL_FIELDS = (
    "finished_at",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "error_message",
)
DEADLINE_MESSAGE = "the request was stopped at its deadline"
# What a caller asked for: a chat completion or a legacy completion (not a conversation title).
JOB_KINDS = frozenset({"chat", "completion", "response"})


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _row(
    request_id: str,
    *,
    user_id: str | None,
    api_key_id: str | None,
    model: str | None,
    conversation_id: str | None,
    source: str,
    trace_id: str | None,
    created_at: float,
    status: str,
    started_at: float | None = None,
    attempts: int = 0,
    **terminal: Any,
) -> Row:
    return {
        "request_id": request_id,
        "user_id": user_id or "",
        "api_key_id": api_key_id,
        "model": model or "",
        "conversation_id": conversation_id,
        "source": source,
        "trace_id": trace_id,
        "created_at": utc(created_at),
        "status": status,
        "started_at": utc(started_at) if started_at is not None else None,
        "attempts": attempts,
        **{f: terminal.get(f) for f in TERMINAL_FIELDS},
    }


def row_of_request(request: ChatRequested) -> Row | None:
    if request.kind not in JOB_KINDS:
        return None
    return _row(
        request.request_id,
        user_id=request.user_id,
        api_key_id=request.api_key_id,
        model=request.model,
        conversation_id=request.conversation_id,
        source=request.source,
        trace_id=request.trace_id,
        created_at=request.created_at,
        status="queued",
    )


def terminal_outcome(event: Completed | Failed | Cancelled) -> dict[str, Any]:
    """The status and error of a terminal event, as the edge's `status_of`/`error_of` say."""
    if isinstance(event, Completed):
        return {"status": "completed", "finish_reason": event.finish_reason[:64]}
    if isinstance(event, Failed):
        return {"status": "failed", "error_code": event.code[:64], "error_message": event.message}
    if event.reason == "deadline":
        return {
            "status": "failed",
            "finish_reason": event.reason,
            "error_code": "deadline_exceeded",
            "error_message": DEADLINE_MESSAGE,
        }
    return {
        "status": "cancelled",
        "finish_reason": event.reason,
        "error_code": "cancelled",
        "error_message": f"the request was cancelled ({event.reason})",
    }


def row_of_event(event: Started | Completed | Failed | Cancelled) -> Row | None:
    if event.kind not in JOB_KINDS:
        return None
    facts: dict[str, Any] = {
        "user_id": event.user_id,
        "api_key_id": event.api_key_id,
        "model": event.model,
        "conversation_id": event.conversation_id,
        "source": event.source,
        "trace_id": event.trace_id,
        # Events from before `created_at` was copied onto them: the event's own time.
        "created_at": event.created_at if event.created_at is not None else event.ts,
        "attempts": event.attempt,
    }
    if isinstance(event, Started):
        return _row(event.request_id, status="running", started_at=event.ts, **facts)
    return _row(
        event.request_id,
        finished_at=utc(event.ts),
        prompt_tokens=event.usage.prompt_tokens,
        completion_tokens=event.usage.completion_tokens,
        **terminal_outcome(event),
        **facts,
    )


def merge(old: Row, new: Row) -> Row:
    """The rules of the module docstring; `_UPSERT` is the same in SQL."""
    out = dict(old)
    for f in FACTS:
        if old[f] is None or old[f] == "":
            out[f] = new[f]
    if RANK[new["status"]] > RANK[old["status"]]:
        out["status"] = new["status"]
        for f in TERMINAL_FIELDS:
            out[f] = new[f]
    starts = [s for s in (old["started_at"], new["started_at"]) if s is not None]
    out["started_at"] = min(starts) if starts else None
    out["attempts"] = max(old["attempts"], new["attempts"])
    return out


def fold(rows: Iterable[Row | None]) -> list[Row]:
    """One row per request id, merged in the order given (log order); sorted by id, so
    concurrent transactions take the row locks in one order and cannot deadlock."""
    merged: dict[str, Row] = {}
    for row in rows:
        if row is None:
            continue
        rid = row["request_id"]
        merged[rid] = merge(merged[rid], row) if rid in merged else row
    return [merged[k] for k in sorted(merged)]


def _rank(status: ColumnElement[Any]) -> ColumnElement[int]:
    return case((status == "queued", 0), (status == "running", 1), else_=2)


def _build_upsert() -> Any:
    stmt = insert(JOBS)
    old, new = JOBS.c, stmt.excluded
    higher = _rank(new.status) > _rank(old.status)
    set_: dict[str, Any] = {f: func.coalesce(func.nullif(old[f], ""), new[f]) for f in FACTS}
    set_["status"] = case((higher, new.status), else_=old.status)
    for f in TERMINAL_FIELDS:
        set_[f] = case((higher, new[f]), else_=old[f])
    # LEAST and GREATEST skip NULLs, as `merge` does.
    set_["started_at"] = func.least(old.started_at, new.started_at)
    set_["attempts"] = func.greatest(old.attempts, new.attempts)
    return stmt.on_conflict_do_update(index_elements=[old.request_id], set_=set_)


# Built once and executed with a list of rows (one multi-row statement per page).
_UPSERT = _build_upsert()


async def upsert_jobs(conn: AsyncConnection, rows: Sequence[Row]) -> None:
    if rows:
        await conn.execute(_UPSERT, list(rows))


class JobRequestsProjection:
    """`Projection[StoredRequest]`: the `requested` messages of CHAT_REQUESTS."""

    name = "jobs-requests"
    event_types: tuple[str, ...] = ("requested",)

    async def apply(self, conn: AsyncConnection, items: Sequence[StoredRequest]) -> None:
        ordered = sorted(items, key=lambda s: s.stream_seq)
        await upsert_jobs(conn, fold(row_of_request(s.request) for s in ordered))


class JobEventsProjection:
    """`Projection[StoredEvent]`: the `started` and terminal events of CHAT_EVENTS."""

    name = "jobs-events"
    event_types: tuple[str, ...] = ("started", "completed", "failed", "cancelled")

    async def apply(self, conn: AsyncConnection, items: Sequence[StoredEvent]) -> None:
        ordered = sorted(items, key=lambda s: s.stream_seq)
        await upsert_jobs(conn, fold(row_of_event(s.event) for s in ordered))
