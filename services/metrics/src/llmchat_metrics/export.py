"""Reading for the replay and export commands: time arguments, the usage rows (streamed from
Postgres with a server-side cursor), the raw events (streamed from the log with an ephemeral
consumer) and their JSON-lines / CSV writers. Nothing is held in memory beyond one batch."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any

from nats.js import JetStreamContext
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common import subjects
from llmchat_common.replay import read_log
from llmchat_metrics.models import REQUESTS

USAGE_COLUMNS = [c.name for c in REQUESTS.columns]
EVENT_COLUMNS = ["stream_seq", "stored_at", "subject", "type", "request_id", "attempt", "seq", "ts", "event"]


# -- usage rows ---------------------------------------------------------------------------------
async def usage_rows(
    engine: AsyncEngine, since: datetime, until: datetime, *, batch: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    """Rows finished in [since, until), oldest first, through a server-side cursor."""
    c = REQUESTS.c
    stmt = (
        REQUESTS.select()
        .where(c.finished_at >= since, c.finished_at < until)
        .order_by(c.finished_at, c.request_id)
        .execution_options(yield_per=batch)
    )
    async with engine.connect() as conn:
        result = await conn.stream(stmt)
        async for row in result.mappings():
            yield dict(row)


async def count_usage_rows(engine: AsyncEngine, since: datetime, until: datetime) -> int:
    c = REQUESTS.c
    stmt = select(func.count()).where(c.finished_at >= since, c.finished_at < until)
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


# -- raw events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawEvent:
    stream_seq: int
    stored_at: datetime
    subject: str
    data: bytes


async def log_span(js: JetStreamContext) -> tuple[int, int]:
    """First and last sequence the events stream holds now."""
    info = await js.stream_info(subjects.EVENTS_STREAM)
    return info.state.first_seq, info.state.last_seq


async def read_events(
    js: JetStreamContext,
    since: datetime,
    until: datetime,
    *,
    filter_subject: str | None = None,
    batch: int = 500,
) -> AsyncIterator[RawEvent]:
    """Events stored in [since, until), in log order, up to what the log held at the start."""
    async for msgs in read_log(
        js,
        since=since,
        until=until,
        filters=[filter_subject or subjects.events_wildcard()],
        batch_size=batch,
        purpose="export",
    ):
        for m in msgs:
            meta = m.metadata
            yield RawEvent(meta.sequence.stream, meta.timestamp, m.subject, bytes(m.data))


def event_record(raw: RawEvent) -> dict[str, Any]:
    try:
        event: Any = json.loads(raw.data)
    except ValueError:
        event = raw.data.decode("utf-8", "replace")
    get: Callable[[str], Any] = event.get if isinstance(event, dict) else (lambda _: None)
    return {
        "stream_seq": raw.stream_seq,
        "stored_at": raw.stored_at,
        "subject": raw.subject,
        "type": get("type"),
        "request_id": get("request_id"),
        "attempt": get("attempt"),
        "seq": get("seq"),
        "ts": get("ts"),
        "event": event,
    }


# -- writers ------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


class Writer:
    """JSON lines, or CSV with a header (nested values as JSON text)."""

    def __init__(self, out: IO[str], fmt: str, columns: list[str]) -> None:
        self._out = out
        self._fmt = fmt
        self._columns = columns
        self._csv: csv.DictWriter[str] | None = None
        if fmt == "csv":
            self._csv = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            self._csv.writeheader()

    def write(self, record: Mapping[str, Any]) -> None:
        if self._csv is None:
            self._out.write(json.dumps({k: _plain(v) for k, v in record.items()}, separators=(",", ":")))
            self._out.write("\n")
            return
        self._csv.writerow(
            {
                k: json.dumps(v, separators=(",", ":")) if isinstance(v, dict | list) else _plain(v)
                for k, v in record.items()
            }
        )
