"""The batch coordinator: runs each batch's lines through the event log and ends the batch.

It lives in the history service, which may write the request stream and creates no consumer
on it (metrics consumes that stream, so may not write it: llmchat_common.launch.nats_auth).

State lives only in Postgres (`history.batches`, `history.batch_lines`), so any history process can
take over after any other died. One process coordinates at a time: each tick runs in one
transaction that holds a transaction-level advisory lock (`pg_try_advisory_xact_lock`); a
replica that does not get it skips the tick. A tick:

1. expires the batches past their window (pending lines are `skipped`; running ones are
   cancelled; the batch ends `expired` once they have stopped);
2. sends a cancel for each running line of a cancelling or expiring batch, once;
3. publishes pending lines, oldest batch first, while fewer than `max_in_flight` lines of all
   batches run, at background priority: a backlog of batch lines never fills the queue that
   interactive chat waits in, and vLLM schedules people watching an answer first. Each owner's
   lines are paced to their per-minute token budget (the tokens their lines' routes would
   reserve, over the last minute); an owner over it waits while others' batches go on;
4. ends each batch whose lines have all stopped (`completed`, `cancelled` or `expired`).

Why every line ends exactly once in the output: a line's request id is `<batch>-<line>`, its
`Nats-Msg-Id`, so a line published again after a crash between publish and commit is dropped by
JetStream's duplicate window (and a copy published after the window is answered by the worker's
"already finished" path). A line's outcome is its newest attempt's terminal event, written by
`BatchLinesProjection` in the consumer's transaction (commit, then ack); an older attempt's
late terminal event changes nothing. The output is rendered from these rows, one per line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from pydantic import ValidationError
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmchat_common import subjects
from llmchat_common.batch_contracts import (
    BatchCreate,
    BatchEnded,
    BatchLine,
    BatchLinesPage,
    BatchLinesQuery,
    BatchListQuery,
    BatchPage,
    BatchRecord,
    BatchRef,
    LineError,
    PreparedLine,
    batch_request_id,
)
from llmchat_common.contracts import Cancelled, ChatRequested, Completed, Failed, Started
from llmchat_common.messaging import read_object, send_cancel
from llmchat_common.projection import StoredEvent
from llmchat_common.rpc import NotFound
from llmchat_common.telemetry import publish_traced
from llmchat_history.models import BATCH_LINES, BATCHES

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock's key: "llmchat batch coordinator".
LOCK_KEY = 0x6C6C6D6263
OPEN = ("pending", "running")
# Statuses with a line in the error file.
ERROR_LINES = ("invalid", "failed", "cancelled", "skipped")
# A failed batch keeps this many of its refused lines as `errors`.
SHOWN_ERRORS = 20
INSERT_CHUNK = 1000
# The window a batch owner's token budget is counted over.
PACE_WINDOW = timedelta(minutes=1)
# A page of lines stays well under NATS's 1 MiB payload.
PAGE_BYTES = 512 * 1024


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _ts(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def outcome_of(event: Completed | Failed | Cancelled) -> str:
    if isinstance(event, Completed):
        return "completed"
    return "failed" if isinstance(event, Failed) or event.reason == "deadline" else "cancelled"


class BatchLinesProjection:
    """`Projection[StoredEvent]`: each batch line's outcome, by the log's fencing rule (the
    newest attempt wins): a `started` of a newer attempt makes the line run again (an older
    attempt's terminal event, even one that arrives later, no longer counts); a terminal event
    of the newest attempt ends it."""

    name = "batch-lines"
    event_types: tuple[str, ...] = ("started", "completed", "failed", "cancelled")

    async def apply(self, conn: AsyncConnection, items: Sequence[StoredEvent]) -> None:
        # Per line, in log order: the newest attempt seen and its terminal event (None: runs).
        lines: dict[str, tuple[int, Completed | Failed | Cancelled | None]] = {}
        for stored in sorted(items, key=lambda s: s.stream_seq):
            e = stored.event
            if not isinstance(e, Started | Completed | Failed | Cancelled) or e.source != "batch":
                continue
            attempt, terminal = lines.get(e.request_id, (-1, None))
            if isinstance(e, Started):
                if e.attempt > attempt:
                    lines[e.request_id] = (e.attempt, None)
            elif e.attempt >= attempt:
                lines[e.request_id] = (e.attempt, e)
        c = BATCH_LINES.c
        for request_id in sorted(lines):
            attempt, terminal = lines[request_id]
            if terminal is None:
                stmt = (
                    update(BATCH_LINES)
                    .where(
                        c.request_id == request_id,
                        c.attempt < attempt,
                        c.status.not_in(("skipped", "invalid")),
                    )
                    .values(status="running", terminal=None, attempt=attempt)
                )
            else:
                stmt = (
                    update(BATCH_LINES)
                    .where(
                        c.request_id == request_id,
                        c.attempt <= attempt,
                        c.status.not_in(("skipped", "invalid")),
                    )
                    .values(
                        status=outcome_of(terminal),
                        terminal=terminal.model_dump_json().encode(),
                        attempt=attempt,
                    )
                )
            await conn.execute(stmt)


def _record(row: Any, counts: dict[str, int]) -> BatchRecord:
    done = counts.get("completed", 0)
    failed = sum(counts.get(s, 0) for s in ("invalid", "failed"))
    return BatchRecord(
        id=row.id,
        user_id=row.user_id,
        endpoint=row.endpoint,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=row.status,
        created_at=row.created_at.timestamp(),
        expires_at=row.expires_at.timestamp(),
        in_progress_at=_ts(row.in_progress_at),
        finalizing_at=_ts(row.finalizing_at),
        completed_at=_ts(row.completed_at),
        failed_at=_ts(row.failed_at),
        expired_at=_ts(row.expired_at),
        cancelling_at=_ts(row.cancelling_at),
        cancelled_at=_ts(row.cancelled_at),
        total=row.total,
        completed=done,
        failed=failed,
        outputs=done,
        errors=sum(counts.get(s, 0) for s in ERROR_LINES),
        metadata=row._mapping["metadata"],
        validation_errors=[LineError.model_validate(e) for e in row.validation_errors],
    )


class BatchCoordinator:
    def __init__(
        self,
        engine: AsyncEngine,
        nc: Client,
        js: JetStreamContext,
        cancels: KeyValue,
        store: ObjectStore,
        *,
        max_in_flight: int,
        tick_s: float,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.nc = nc
        self.js = js
        self.cancels = cancels
        self.store = store
        self.max_in_flight = max_in_flight
        self.tick_s = tick_s
        self.publish_timeout_s = publish_timeout_s

    # -- operations (RPC) --

    async def create(self, body: BatchCreate) -> BatchRecord:
        """Idempotent by batch id: a retried create returns the batch the first one made. The
        batch is `validating` until a tick has loaded its lines (a transaction: all or none)."""
        batch: dict[str, Any] = {
            "id": body.batch_id,
            "user_id": body.user_id,
            "endpoint": body.endpoint,
            "input_file_id": body.input_file_id,
            "lines_object": body.lines_object,
            "webhook_url": body.webhook_url,
            "tokens_per_minute": body.tokens_per_minute,
            "completion_window": body.completion_window,
            "status": "validating",
            "ending": None,
            "total": 0,
            "metadata": body.metadata,
            "validation_errors": [],
            "created_at": utc(body.created_at),
            "expires_at": utc(body.expires_at),
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(BATCHES).values(**batch).on_conflict_do_nothing())
        return await self.get(BatchRef(user_id=body.user_id, batch_id=body.batch_id))

    async def _load(self, conn: AsyncConnection, now: datetime) -> None:
        """One validating batch's lines into `batch_lines`; it runs, or fails when none is valid."""
        b = BATCHES.c
        row = (
            await conn.execute(
                select(BATCHES).where(b.status == "validating").order_by(b.created_at).limit(1)
            )
        ).first()
        if row is None:
            return
        raw = await read_object(self.js, self.store, row.lines_object)  # unavailable: next tick
        try:
            async with conn.begin_nested():
                await self._insert_lines(conn, row, raw, now)
        except (DBAPIError, ValidationError) as exc:  # one bad batch must not stop the others
            log.error("batch not loaded; failed", extra={"batch_id": row.id, "error": repr(exc)[:300]})
            refusal = LineError(code="batch_unloadable", message="the batch's lines could not be stored")
            await conn.execute(
                update(BATCHES)
                .where(b.id == row.id)
                .values(status="failed", failed_at=now, validation_errors=[refusal.model_dump()])
            )

    async def _insert_lines(self, conn: AsyncConnection, row: Any, raw: bytes, now: datetime) -> None:
        b = BATCHES.c
        lines = [PreparedLine.model_validate_json(text) for text in raw.splitlines() if text.strip()]
        refused = [line.error for line in lines if line.error is not None]
        runs = any(line.request is not None for line in lines)
        rows = [
            {
                "request_id": batch_request_id(row.id, line.line),
                "batch_id": row.id,
                "line": line.line,
                "custom_id": line.custom_id,
                "status": "pending" if line.request is not None else "invalid",
                "body": orjson.dumps(line.body) if line.body is not None else None,
                "request": line.request.model_dump_json().encode() if line.request is not None else None,
                "terminal": None,
                "error": line.error.model_dump() if line.error is not None else None,
                "attempt": 0,
                "cancel_sent": False,
                "tokens": line.tokens,
                "published_at": None,
            }
            for line in lines
        ]
        for start in range(0, len(rows), INSERT_CHUNK):
            await conn.execute(
                insert(BATCH_LINES).on_conflict_do_nothing(), rows[start : start + INSERT_CHUNK]
            )
        values: dict[str, Any] = {"total": len(lines)}
        if runs:
            values.update(status="in_progress", in_progress_at=now)
        else:
            values.update(
                status="failed",
                failed_at=now,
                validation_errors=[e.model_dump() for e in refused[:SHOWN_ERRORS]],
            )
        await conn.execute(update(BATCHES).where(b.id == row.id).values(**values))
        log.info("batch loaded", extra={"batch_id": row.id, "lines": len(lines), "refused": len(refused)})

    async def get(self, ref: BatchRef) -> BatchRecord:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(BATCHES).where(BATCHES.c.id == ref.batch_id, BATCHES.c.user_id == ref.user_id)
                )
            ).first()
            if row is None:
                raise NotFound("batch not found")
            return _record(row, await self._count(conn, row.id))

    async def _count(self, conn: AsyncConnection, batch_id: str) -> dict[str, int]:
        c = BATCH_LINES.c
        rows = await conn.execute(
            select(c.status, func.count()).where(c.batch_id == batch_id).group_by(c.status)
        )
        return {status: n for status, n in rows}

    async def _counts(self, conn: AsyncConnection, ids: list[str]) -> dict[str, dict[str, int]]:
        c = BATCH_LINES.c
        out: dict[str, dict[str, int]] = {i: {} for i in ids}
        rows = await conn.execute(
            select(c.batch_id, c.status, func.count())
            .where(c.batch_id.in_(ids))
            .group_by(c.batch_id, c.status)
        )
        for batch_id, status, n in rows:
            out[batch_id][status] = n
        return out

    async def list(self, query: BatchListQuery) -> BatchPage:
        b = BATCHES.c
        stmt = select(BATCHES).where(b.user_id == query.user_id)
        async with self.engine.connect() as conn:
            if query.after is not None:
                anchor = (
                    await conn.execute(
                        select(b.created_at, b.id).where(b.id == query.after, b.user_id == query.user_id)
                    )
                ).first()
                if anchor is not None:
                    stmt = stmt.where(
                        (b.created_at < anchor.created_at)
                        | and_(b.created_at == anchor.created_at, b.id < anchor.id)
                    )
            rows = (
                await conn.execute(stmt.order_by(b.created_at.desc(), b.id.desc()).limit(query.limit + 1))
            ).all()
            shown = rows[: query.limit]
            counts = await self._counts(conn, [r.id for r in shown])
        return BatchPage(data=[_record(r, counts[r.id]) for r in shown], has_more=len(rows) > query.limit)

    async def cancel(self, ref: BatchRef) -> BatchRecord:
        """In progress: `cancelling` now (pending lines are skipped; running ones get a cancel on
        the next tick), `cancelled` once they have stopped. Ended: returned as it is."""
        now = utc(time.time())
        b, c = BATCHES.c, BATCH_LINES.c
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(BATCHES).where(b.id == ref.batch_id, b.user_id == ref.user_id).with_for_update()
                )
            ).first()
            if row is None:
                raise NotFound("batch not found")
            if row.status in ("validating", "in_progress"):
                await conn.execute(
                    update(BATCHES).where(b.id == row.id).values(status="cancelling", cancelling_at=now)
                )
                await conn.execute(
                    update(BATCH_LINES)
                    .where(c.batch_id == row.id, c.status == "pending")
                    .values(status="skipped")
                )
        return await self.get(ref)

    async def lines(self, query: BatchLinesQuery) -> BatchLinesPage:
        c = BATCH_LINES.c
        statuses = ("completed",) if query.which == "output" else ERROR_LINES
        async with self.engine.connect() as conn:
            owner = (
                await conn.execute(
                    select(BATCHES.c.id).where(
                        BATCHES.c.id == query.batch_id, BATCHES.c.user_id == query.user_id
                    )
                )
            ).first()
            if owner is None:
                raise NotFound("batch not found")
            rows = (
                await conn.execute(
                    select(BATCH_LINES)
                    .where(c.batch_id == query.batch_id, c.line > query.after, c.status.in_(statuses))
                    .order_by(c.line)
                    .limit(query.limit + 1)
                )
            ).all()
        out: list[BatchLine] = []
        size = 0
        for row in rows[: query.limit]:
            line = BatchLine(
                line=row.line,
                custom_id=row.custom_id,
                request_id=row.request_id,
                status=row.status,
                body=orjson.loads(row.body) if row.body is not None else None,
                request=ChatRequested.model_validate_json(row.request) if row.request is not None else None,
                terminal=orjson.loads(row.terminal) if row.terminal is not None else None,
                error=LineError.model_validate(row.error) if row.error is not None else None,
            )
            size += len(line.model_dump_json())
            if out and size > PAGE_BYTES:
                return BatchLinesPage(lines=out, next_after=out[-1].line)
            out.append(line)
        more = len(rows) > query.limit
        return BatchLinesPage(lines=out, next_after=out[-1].line if more and out else None)

    # -- the loop --

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next tick starts over from Postgres
                log.warning("batch tick failed", extra={"error": repr(exc)[:300]})
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        async with self.engine.begin() as conn:
            if not await conn.scalar(select(func.pg_try_advisory_xact_lock(LOCK_KEY))):
                return
            now = utc(time.time())
            await self._load(conn, now)
            await self._expire(conn, now)
            await self._send_cancels(conn)
            await self._publish(conn, now)
            await self._end(conn, now)

    async def _expire(self, conn: AsyncConnection, now: datetime) -> None:
        b, c = BATCHES.c, BATCH_LINES.c
        expired = (
            (
                await conn.execute(
                    update(BATCHES)
                    .where(b.status == "in_progress", b.expires_at <= now)
                    .values(status="finalizing", ending="expired", finalizing_at=now)
                    .returning(b.id)
                )
            )
            .scalars()
            .all()
        )
        if expired:
            await conn.execute(
                update(BATCH_LINES)
                .where(c.batch_id.in_(expired), c.status == "pending")
                .values(status="skipped")
            )

    async def _send_cancels(self, conn: AsyncConnection) -> None:
        b, c = BATCHES.c, BATCH_LINES.c
        stopping = select(b.id).where((b.status == "cancelling") | (b.ending == "expired"))
        rows = (
            (
                await conn.execute(
                    select(c.request_id)
                    .where(c.batch_id.in_(stopping), c.status == "running", c.cancel_sent.is_(False))
                    .limit(1000)
                )
            )
            .scalars()
            .all()
        )
        for request_id in rows:
            await send_cancel(self.nc, self.cancels, request_id, "client")
        if rows:
            await conn.execute(update(BATCH_LINES).where(c.request_id.in_(rows)).values(cancel_sent=True))

    async def _publish(self, conn: AsyncConnection, now: datetime) -> None:
        b, c = BATCHES.c, BATCH_LINES.c
        running = await conn.scalar(
            select(func.count()).select_from(BATCH_LINES).where(c.status == "running")
        )
        room = self.max_in_flight - int(running or 0)
        if room <= 0:
            return
        # Each owner's tokens published in the last minute, against the budget their batches
        # carry: lines are paced to it, and an owner over it waits while others go on.
        recent = (
            await conn.execute(
                select(b.user_id, func.coalesce(func.sum(c.tokens), 0))
                .join(BATCHES, b.id == c.batch_id)
                .where(c.published_at > now - PACE_WINDOW)
                .group_by(b.user_id)
            )
        ).all()
        spent: dict[str, int] = {user: int(tokens) for user, tokens in recent}
        # At most `room` pending lines per owner (oldest batch first): an owner over budget
        # cannot hide the next owner's lines behind its own.
        rank = (
            func.row_number()
            .over(partition_by=b.user_id, order_by=(b.created_at, c.batch_id, c.line))
            .label("rank")
        )
        pending = (
            select(
                c.request_id, c.request, c.tokens, b.user_id, b.tokens_per_minute, b.created_at, c.line, rank
            )
            .join(BATCHES, b.id == c.batch_id)
            .where(b.status == "in_progress", c.status == "pending")
            .subquery()
        )
        p = pending.c
        candidates = (
            await conn.execute(
                select(pending).where(p.rank <= room).order_by(p.created_at, p.user_id, p.rank)
            )
        ).all()
        rows = []
        for row in candidates:
            used = spent.get(row.user_id, 0)
            if row.tokens_per_minute is not None and used + row.tokens > row.tokens_per_minute and used > 0:
                continue  # over budget this minute (a line larger than the budget goes alone)
            spent[row.user_id] = used + row.tokens
            rows.append(row)
            if len(rows) == room:
                break
        if not rows:
            return
        # Stamped when published: its queue time is the log's, not the batch's.
        stamp = now.timestamp()
        requests = [
            ChatRequested.model_validate_json(r.request).model_copy(update={"created_at": stamp})
            for r in rows
        ]
        await asyncio.gather(
            *(
                publish_traced(
                    self.js,
                    subjects.request_subject(request.model),
                    request.model_dump_json().encode(),
                    msg_id=request.request_id,
                    timeout_s=self.publish_timeout_s,
                )
                for request in requests
            )
        )
        await conn.execute(
            update(BATCH_LINES)
            .where(c.request_id.in_([r.request_id for r in rows]), c.status == "pending")
            .values(status="running", published_at=now)
        )

    async def _end(self, conn: AsyncConnection, now: datetime) -> None:
        b, c = BATCHES.c, BATCH_LINES.c
        still_open = select(c.batch_id).where(c.status.in_(OPEN)).distinct()
        ending = (
            await conn.execute(
                select(b.id, b.status, b.ending, b.webhook_url).where(
                    b.status.in_(("in_progress", "cancelling", "finalizing")), b.id.not_in(still_open)
                )
            )
        ).all()
        for row in ending:
            final = row.ending or {"in_progress": "completed", "cancelling": "cancelled"}.get(
                row.status, "completed"
            )
            values: dict[str, Any] = {"status": final, f"{final}_at": now}
            values["finalizing_at"] = case((b.finalizing_at.is_(None), now), else_=b.finalizing_at)
            await conn.execute(update(BATCHES).where(b.id == row.id).values(**values))
            log.info("batch ended", extra={"batch_id": row.id, "status": final})
            if row.webhook_url is not None:
                await self._notify(conn, row.id, row.webhook_url)

    async def _notify(self, conn: AsyncConnection, batch_id: str, url: str) -> None:
        """The batch-ended notice, before the commit that ends the batch: a crash in between
        ends it again on the next tick, and the notice's message id drops the second copy."""
        row = (await conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id))).one()
        notice = BatchEnded(
            batch=_record(row, await self._count(conn, batch_id)), webhook_url=url, ts=time.time()
        )
        await self.js.publish(
            subjects.batch_notice_subject(batch_id),
            notice.model_dump_json().encode(),
            headers={"Nats-Msg-Id": f"{batch_id}-ended"},
            timeout=self.publish_timeout_s,
        )
