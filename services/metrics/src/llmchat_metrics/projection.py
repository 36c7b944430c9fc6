"""The usage projection: each terminal event becomes one `usage.requests` row, and the rows an
insert actually added are summed into `usage.daily` in the same transaction.

Why this is exactly once: the insert is keyed by request id with ON CONFLICT DO NOTHING and
RETURNING, so it returns only rows that did not exist; the aggregate is incremented from those
returned rows only. A redelivered batch (crash between commit and ack), a re-published copy
with a new message id, or a replay over live data returns nothing and adds nothing. Commit
then ack is the consumer's job (llmchat_common.projection).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from llmchat_common.contracts import Cancelled, Completed, Failed
from llmchat_common.projection import StoredEvent
from llmchat_metrics.models import DAILY, REQUESTS


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def request_row(stored: StoredEvent) -> dict[str, Any] | None:
    """The usage row of a terminal event (None for any other event)."""
    e = stored.event
    if isinstance(e, Completed):
        status, reason = "completed", e.finish_reason
    elif isinstance(e, Failed):
        status, reason = "failed", e.code
    elif isinstance(e, Cancelled):
        status, reason = "cancelled", e.reason
    else:
        return None
    finished_at = utc(e.ts)
    return {
        "request_id": e.request_id,
        "user_id": e.user_id or "",
        "api_key_id": e.api_key_id,
        "model": e.model or "",
        "kind": e.kind,
        "conversation_id": e.conversation_id,
        "status": status,
        "finish_reason": reason[:64],
        "prompt_tokens": e.usage.prompt_tokens,
        "completion_tokens": e.usage.completion_tokens,
        "queue_ms": e.timings.queue_ms,
        "ttft_ms": e.timings.ttft_ms,
        "tpot_ms": e.timings.tpot_ms,
        "e2e_ms": e.timings.e2e_ms,
        "worker_id": e.worker_id,
        "attempts": e.attempt,
        "trace_id": e.trace_id,
        "created_at": utc(e.created_at) if e.created_at is not None else None,
        "finished_at": finished_at,
        "day": finished_at.date(),
        "stream_seq": stored.stream_seq,
    }


def request_rows(events: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """One row per request id: the first stored copy wins (the live consumer commits it first,
    and a replay reads it first, so both keep the same one). Sorted by id, so concurrent
    replicas take the key locks in one order and cannot deadlock."""
    rows: dict[str, dict[str, Any]] = {}
    for stored in sorted(events, key=lambda s: s.stream_seq):
        row = request_row(stored)
        if row is not None:
            rows.setdefault(row["request_id"], row)
    return [rows[k] for k in sorted(rows)]


@dataclass
class DailySum:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


DailyKey = tuple[str, str, date, str]  # user_id, model, day, status


def daily_increments(inserted: Iterable[Any]) -> list[dict[str, Any]]:
    """The aggregate increments of the rows an insert added (each with user_id, model, day,
    status, prompt_tokens, completion_tokens), one per key, in key order."""
    sums: dict[DailyKey, DailySum] = {}
    for row in inserted:
        s = sums.setdefault((row.user_id, row.model, row.day, row.status), DailySum())
        s.requests += 1
        s.prompt_tokens += row.prompt_tokens
        s.completion_tokens += row.completion_tokens
    return [
        {
            "user_id": k[0],
            "model": k[1],
            "day": k[2],
            "status": k[3],
            "requests": s.requests,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
        }
        for k, s in sorted(sums.items())
    ]


# Built once: executed with a list of rows, SQLAlchemy's "insertmanyvalues" renders one
# multi-row INSERT ... VALUES per page from this cached statement (compiling a fresh
# `.values([...])` per batch cost more than the database work).
_INSERT_REQUESTS = (
    insert(REQUESTS)
    .on_conflict_do_nothing(index_elements=[REQUESTS.c.request_id])
    .returning(
        REQUESTS.c.user_id,
        REQUESTS.c.model,
        REQUESTS.c.day,
        REQUESTS.c.status,
        REQUESTS.c.prompt_tokens,
        REQUESTS.c.completion_tokens,
    )
)
_UPSERT = insert(DAILY)
# Keys are unique within one statement (grouped first): Postgres refuses to update one row twice
# in a single ON CONFLICT DO UPDATE.
_ADD_TO_DAILY = _UPSERT.on_conflict_do_update(
    index_elements=[DAILY.c.user_id, DAILY.c.model, DAILY.c.day, DAILY.c.status],
    set_={
        "requests": DAILY.c.requests + _UPSERT.excluded.requests,
        "prompt_tokens": DAILY.c.prompt_tokens + _UPSERT.excluded.prompt_tokens,
        "completion_tokens": DAILY.c.completion_tokens + _UPSERT.excluded.completion_tokens,
    },
)


async def insert_requests(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Multi-row inserts; returns the rows that were new (existing ids return nothing)."""
    if not rows:
        return []
    result = await conn.execute(_INSERT_REQUESTS, list(rows))
    return list(result.all())


async def add_to_daily(conn: AsyncConnection, increments: Sequence[dict[str, Any]]) -> None:
    if increments:
        await conn.execute(_ADD_TO_DAILY, list(increments))


class UsageProjection:
    """`llmchat_common.projection.Projection` for the usage tables."""

    name = "metrics"
    event_types: tuple[str, ...] = ("completed", "failed", "cancelled")

    async def apply(self, conn: AsyncConnection, events: Sequence[StoredEvent]) -> None:
        rows = request_rows(events)
        if not rows:
            return
        inserted = await insert_requests(conn, rows)
        await add_to_daily(conn, daily_increments(inserted))
