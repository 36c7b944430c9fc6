"""Reading `usage.jobs` for the jobs API: one job of its owner, or a page of them.

Pages are keyset-paginated, newest first, on (created_at, request_id) (the listing index), so a
page is as cheap at the millionth job as at the first and a job queued between two calls moves
nothing. The cursor is the last row's key, base64url JSON; callers treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from llmchat_common.rpc import InvalidRequest, NotFound
from llmchat_common.usage_contracts import JobListQuery, JobPage, JobQuery, JobRecord
from llmchat_metrics.models import JOBS

_C = JOBS.c


def encode_cursor(created_at: datetime, request_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, request_id = json.loads(raw)
        when = datetime.fromisoformat(created)
        if not isinstance(request_id, str) or when.tzinfo is None:
            raise ValueError("not a cursor")
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidRequest("invalid request: cursor: not a cursor of this listing") from exc
    return when, request_id


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def record(row: Any) -> JobRecord:
    m = row._mapping
    return JobRecord(
        request_id=m["request_id"],
        user_id=m["user_id"],
        api_key_id=m["api_key_id"],
        model=m["model"],
        conversation_id=m["conversation_id"],
        source=m["source"],
        status=m["status"],
        created_at=m["created_at"].timestamp(),
        started_at=_ts(m["started_at"]),
        finished_at=_ts(m["finished_at"]),
        attempts=m["attempts"],
        finish_reason=m["finish_reason"],
        prompt_tokens=m["prompt_tokens"],
        completion_tokens=m["completion_tokens"],
        error_code=m["error_code"],
        error_message=m["error_message"],
        trace_id=m["trace_id"],
    )


async def get_job(conn: AsyncConnection, query: JobQuery) -> JobRecord:
    # Another user's job is not found, like a missing one (rpc.NotFound).
    stmt = select(JOBS).where(_C.request_id == query.request_id, _C.user_id == query.user_id)
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound("job not found")
    return record(row)


async def list_jobs(conn: AsyncConnection, query: JobListQuery) -> JobPage:
    stmt = select(JOBS).where(_C.user_id == query.user_id)
    if query.status:
        stmt = stmt.where(_C.status.in_(query.status))
    if query.cursor:
        created_at, request_id = decode_cursor(query.cursor)
        stmt = stmt.where(tuple_(_C.created_at, _C.request_id) < tuple_(created_at, request_id))
    # One more than asked: whether there is a next page, without a count.
    stmt = stmt.order_by(_C.created_at.desc(), _C.request_id.desc()).limit(query.limit + 1)
    rows = (await conn.execute(stmt)).all()
    page = rows[: query.limit]
    next_cursor = None
    if len(rows) > query.limit:
        last = page[-1]._mapping
        next_cursor = encode_cursor(last["created_at"], last["request_id"])
    return JobPage(data=[record(r) for r in page], next_cursor=next_cursor)
