"""The metrics service as a real process: the usage projection of CHAT_EVENTS into Postgres,
its RPC reports, replay, export and Prometheus metrics, with faults injected for real
(SIGKILL between commit and ack, Postgres stopped).

Terminal events are synthetic and published straight to the log with an admin connection; each
test uses its own user id and request ids, so aggregates are compared per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from llmchat_metrics.models import SCHEMA, Base
from nats.aio.client import Client
from nats.js.api import ConsumerInfo

from llmchat_common import subjects
from llmchat_common.contracts import Cancelled, Completed, Failed, Timings, Usage
from llmchat_common.forgetting import outcome
from llmchat_common.launch.process import ManagedProcess, free_port, wait_until
from llmchat_common.launch.services import rpc_ping, start_metrics
from llmchat_common.launch.stack import LocalStack
from llmchat_common.rpc import RpcReply
from llmchat_common.testing.migrations import migration_diff
from llmchat_common.usage_contracts import UsageReport
from tests.conftest import paused
from tests.helpers import connect_nats, eventually

DURABLE = "projection-metrics"
MODEL = "usage-test-model"
TODAY = datetime.now(UTC).date()
YESTERDAY = TODAY - timedelta(days=1)
# A short ack wait: events a killed process held come back within seconds.
BASE_ENV = {"LLMCHAT_METRICS_PROJECTION__ACK_WAIT_S": "2", "LLMCHAT_METRICS_SNAPSHOT_INTERVAL_S": "0.5"}


@dataclass
class Metrics:
    """The service under test; tests may kill and restart it."""

    stack: LocalStack
    prom_port: int
    proc: ManagedProcess | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return {**BASE_ENV, "LLMCHAT_METRICS_PROMETHEUS_PORT": str(self.prom_port), **extra}

    def start(self, **extra: str) -> None:
        self.proc = start_metrics(self.stack, extra_env=self.env(**extra))

    def spawn(self, **extra: str) -> ManagedProcess:
        """Started without waiting for readiness (the caller watches the database)."""
        env = {**os.environ, **self.stack.env("metrics"), **self.env(**extra), "PYTHONUNBUFFERED": "1"}
        self.proc = ManagedProcess(
            "metrics",
            [sys.executable, "-m", "llmchat_metrics"],
            env=env,
            log_path=self.stack.logs / "metrics.log",
        ).start()
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture(scope="module")
def metrics(stack: LocalStack, metrics_service: ManagedProcess) -> Iterator[Metrics]:
    with paused(metrics_service, lambda: rpc_ping(stack, subjects.usage_subject("ping"))):
        m = Metrics(stack, free_port())
        m.start()
        try:
            yield m
        finally:
            m.stop()


@pytest.fixture(scope="module")
async def admin(stack: LocalStack) -> AsyncIterator[Client]:
    nc = await connect_nats(stack.env())
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
async def edge(stack: LocalStack, metrics: Metrics) -> AsyncIterator[Client]:
    """The edge's credentials: the only caller usage's subjects allow."""
    nc = await connect_nats(stack.env("chat"))
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
async def db(stack: LocalStack, metrics: Metrics) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    yield conn
    await conn.close()


# -- events ---------------------------------------------------------------------------------------
def at(day: date, seconds: float = 0.0) -> float:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp() + seconds


def terminal(
    user: str,
    *,
    status: str = "completed",
    day: date = TODAY,
    prompt: int = 7,
    out: int = 3,
    model: str = MODEL,
) -> Completed | Failed | Cancelled:
    rid = f"req-{uuid.uuid4().hex}"
    ts = at(day, float(uuid.uuid4().int % 3600))
    common: dict[str, Any] = {
        "request_id": rid,
        "attempt": 1,
        "seq": 5,
        "worker_id": "w-test",
        "ts": ts,
        "user_id": user,
        "api_key_id": None,
        "model": model,
        "trace_id": uuid.uuid4().hex,
        "created_at": ts - 1.5,
        "usage": Usage(prompt_tokens=prompt, completion_tokens=out),
        "timings": Timings(queue_ms=2.0, ttft_ms=30.0, tpot_ms=4.0, e2e_ms=1500.0),
    }
    if status == "completed":
        return Completed(finish_reason="stop", text="ok", **common)
    if status == "failed":
        return Failed(code="engine_error", message="boom", text="partial", **common)
    return Cancelled(reason="client", text="part", **common)


def mixed(user: str, n: int, *, day: date = TODAY) -> list[Completed | Failed | Cancelled]:
    statuses = ("completed", "completed", "failed", "cancelled")
    return [terminal(user, status=statuses[i % 4], day=day, prompt=5 + i, out=i % 7) for i in range(n)]


async def publish(nc: Client, events: list[Any], *, fresh_ids: bool = False) -> int:
    """Publishes to the log; the original message ids, or new ones (a re-published copy).
    Returns the last stream sequence."""
    js = nc.jetstream()
    last = 0
    for start in range(0, len(events), 200):
        acks = await asyncio.gather(
            *(
                js.publish(
                    subjects.event_subject(e.request_id, e.type),
                    e.model_dump_json().encode(),
                    headers={
                        "Nats-Msg-Id": uuid.uuid4().hex
                        if fresh_ids
                        else subjects.msg_id_for_event(e.request_id, e.attempt, e.seq)
                    },
                )
                for e in events[start : start + 200]
            )
        )
        last = max(last, *(a.seq for a in acks))
    return last


async def consumer_info(nc: Client) -> ConsumerInfo:
    info: ConsumerInfo = await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, DURABLE)
    return info


def delivered(info: ConsumerInfo) -> tuple[int, int]:
    """(consumer sequence, stream sequence) of the last delivery."""
    d = info.delivered
    return (d.consumer_seq or 0, d.stream_seq or 0) if d is not None else (0, 0)


async def caught_up(nc: Client, last_seq: int, timeout: float = 60) -> ConsumerInfo:
    """The durable consumer delivered up to `last_seq` and has nothing pending or unacked."""

    async def check() -> ConsumerInfo | None:
        info = await consumer_info(nc)
        done = delivered(info)[1] >= last_seq and info.num_pending == 0 and info.num_ack_pending == 0
        return info if done else None

    return await eventually(check, timeout=timeout, what=f"projection caught up to seq {last_seq}")


async def rows_of(db: asyncpg.Connection, ids: list[str]) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM usage.requests WHERE request_id = ANY($1::text[])", ids))


async def wait_rows(db: asyncpg.Connection, ids: list[str], timeout: float = 60) -> list[asyncpg.Record]:
    async def check() -> list[asyncpg.Record] | None:
        rows = await rows_of(db, ids)
        return rows if len(rows) == len(ids) else None

    return await eventually(check, timeout=timeout, what=f"{len(ids)} usage rows")


async def daily_of(db: asyncpg.Connection, user: str) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    rows = await db.fetch(
        "SELECT model, day, status, requests, prompt_tokens, completion_tokens"
        " FROM usage.daily WHERE user_id = $1",
        user,
    )
    return {
        (r["model"], r["day"], r["status"]): (r["requests"], r["prompt_tokens"], r["completion_tokens"])
        for r in rows
    }


def expected_daily(events: list[Any]) -> dict[tuple[Any, ...], tuple[int, int, int]]:
    sums: dict[tuple[Any, ...], tuple[int, int, int]] = {}
    for e in events:
        key = (e.model, datetime.fromtimestamp(e.ts, UTC).date(), e.type)
        n, p, c = sums.get(key, (0, 0, 0))
        sums[key] = (n + 1, p + e.usage.prompt_tokens, c + e.usage.completion_tokens)
    return sums


async def rpc(nc: Client, op: str, body: dict[str, Any] | bytes) -> RpcReply:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subjects.usage_subject(op), payload, timeout=10)
    return RpcReply.model_validate_json(msg.data)


async def report(nc: Client, op: str, body: dict[str, Any]) -> UsageReport:
    reply = await rpc(nc, op, body)
    assert reply.ok, reply.error
    return UsageReport.model_validate(reply.result)


def cli(stack: LocalStack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmchat_metrics", *args],
        env={**os.environ, **stack.env("metrics"), "LLMCHAT_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition (labels in any order)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric_name, _, rest = series.partition("{")
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",")) if rest else {}
        if metric_name == name and {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return None


# -- migrations and bad input (f, g) ----------------------------------------------------------
async def test_migrations_match_the_models_and_migrate_twice_is_a_no_op(
    stack: LocalStack, metrics: Metrics, db: asyncpg.Connection
) -> None:
    assert await migration_diff(stack.env()["LLMCHAT_POSTGRES_DSN"], Base.metadata, SCHEMA) == []
    before = await db.fetchval("SELECT version_num FROM usage.alembic_version")
    for _ in range(2):
        result = cli(stack, "migrate")
        assert result.returncode == 0, result.stderr
    assert await db.fetchval("SELECT version_num FROM usage.alembic_version") == before == "0002"


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u", "since": "2026-12-02", "until": "2026-12-01"},
        {"user_id": "u", "since": "2026-12-01", "until": "2026-12-01", "surprise": 1},
        {"user_id": "u", "since": "2026-01-01", "until": "2027-12-31"},
        {"user_id": "u", "since": "not a date", "until": "2026-12-01"},
        {"since": "2026-12-01", "until": "2026-12-01"},
        {"user_id": "u", "since": "2026-12-01", "until": "2026-12-01", "group_by": "user"},
        b"{not json",
        b"",
    ],
)
async def test_bad_input_is_invalid_request_never_a_crash(edge: Client, body: dict[str, Any] | bytes) -> None:
    reply = await rpc(edge, "usage", body)
    assert not reply.ok and reply.error is not None and reply.error.code == "invalid_request", reply
    admin = await rpc(edge, "admin_usage", {"since": "2026-12-02", "until": "2026-12-01"})
    assert admin.error is not None and admin.error.code == "invalid_request"
    assert (await rpc(edge, "ping", {})).ok


# -- one row per request, re-published copies change nothing (a) --------------------------------
async def test_one_row_per_request_and_republished_copies_change_nothing(
    admin: Client, edge: Client, db: asyncpg.Connection
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = mixed(user, 40)
    ids = [e.request_id for e in events]
    await publish(admin, events)
    rows = await wait_rows(db, ids)
    before_rows = {r["request_id"]: dict(r) for r in rows}
    before_daily = await daily_of(db, user)
    assert before_daily == expected_daily(events)

    # The same events again with new message ids (JetStream's de-duplication cannot help), one
    # of them twice in a row so a batch holds two copies of it.
    last = await publish(admin, [*events, events[0]], fresh_ids=True)
    await caught_up(admin, last)
    after = await rows_of(db, ids)
    assert len(after) == len(ids)
    assert {r["request_id"]: dict(r) for r in after} == before_rows  # the first copy stays
    assert await daily_of(db, user) == before_daily
    got = await report(edge, "usage", {"user_id": user, "since": str(TODAY), "until": str(TODAY)})
    assert got.total.requests == len(events)


async def test_an_event_the_database_refuses_is_skipped_and_blocks_nothing(
    stack: LocalStack, admin: Client, db: asyncpg.Connection
) -> None:
    """Postgres text cannot hold NUL: such an event would fail its batch forever. The batch is
    applied event by event, the refused one skipped (and logged), the rest stored once."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    poison = terminal(user, model="nul\x00model")
    good = mixed(user, 6)
    await publish(admin, [good[0], poison, *good[1:]])
    rows = await wait_rows(db, [e.request_id for e in good])
    assert len(rows) == len(good)
    assert await rows_of(db, [poison.request_id]) == []
    assert await daily_of(db, user) == expected_daily(good)
    log = (stack.logs / "metrics.log").read_text()
    assert "event refused by the database; skipped" in log and poison.request_id in log


# -- the report for a day equals the sum of that day's terminal events (e) -----------------------
async def test_usage_report_equals_the_sum_of_the_days_terminal_events(
    stack: LocalStack, admin: Client, edge: Client, db: asyncpg.Connection
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    today = [
        *mixed(user, 24, day=TODAY),
        terminal(user, status="cancelled", prompt=11, out=4, model="other-model"),
    ]
    yesterday = mixed(user, 9, day=YESTERDAY)
    other_user = mixed(f"user-{uuid.uuid4().hex[:8]}", 5, day=TODAY)
    await publish(admin, today + yesterday + other_user)
    await wait_rows(db, [e.request_id for e in today + yesterday + other_user])

    def sums(events: list[Any]) -> dict[str, int]:
        return {
            "requests": len(events),
            "completed": sum(e.type == "completed" for e in events),
            "failed": sum(e.type == "failed" for e in events),
            "cancelled": sum(e.type == "cancelled" for e in events),
            "prompt_tokens": sum(e.usage.prompt_tokens for e in events),
            "completion_tokens": sum(e.usage.completion_tokens for e in events),
            "total_tokens": sum(e.usage.total_tokens for e in events),
        }

    def bucket_sums(bucket: Any) -> dict[str, int]:
        return {k: getattr(bucket, k) for k in sums([])}

    day = await report(edge, "usage", {"user_id": user, "since": str(TODAY), "until": str(TODAY)})
    assert [b.day for b in day.data] == [TODAY]
    assert bucket_sums(day.data[0]) == sums(today) == bucket_sums(day.total)
    # Failed and cancelled requests carry their partial tokens.
    partial = [e for e in today if e.type != "completed"]
    assert sum(e.usage.completion_tokens for e in partial) > 0

    both = await report(edge, "usage", {"user_id": user, "since": str(YESTERDAY), "until": str(TODAY)})
    assert [b.day for b in both.data] == [YESTERDAY, TODAY]
    assert bucket_sums(both.data[0]) == sums(yesterday)
    assert bucket_sums(both.total) == sums(today + yesterday)

    by_model = await report(
        edge, "usage", {"user_id": user, "since": str(TODAY), "until": str(TODAY), "group_by": "model"}
    )
    assert [b.model for b in by_model.data] == sorted([MODEL, "other-model"])
    models = {b.model: b for b in by_model.data}
    assert bucket_sums(models["other-model"]) == sums([e for e in today if e.model == "other-model"])
    assert bucket_sums(models[MODEL]) == sums([e for e in today if e.model == MODEL])
    filtered = await report(
        edge, "usage", {"user_id": user, "since": str(TODAY), "until": str(TODAY), "model": "other-model"}
    )
    assert filtered.total.requests == 1 and filtered.total.prompt_tokens == 11

    across = await report(
        edge, "admin_usage", {"since": str(TODAY), "until": str(TODAY), "group_by": "user", "user_id": user}
    )
    assert [b.user_id for b in across.data] == [user]
    assert bucket_sums(across.total) == sums(today)
    everyone = await report(
        edge, "admin_usage", {"since": str(TODAY), "until": str(TODAY), "group_by": "user"}
    )
    assert {user, other_user[0].user_id} <= {b.user_id for b in everyone.data}

    # The CSV export of that day's usage rows sums to the same numbers.
    result = cli_export(stack, "usage", "csv", TODAY)
    lines = [line.split(",") for line in result.splitlines()]
    header, data = lines[0], lines[1:]
    mine = [dict(zip(header, r, strict=True)) for r in data if r[header.index("user_id")] == user]
    assert len(mine) == len(today)
    assert sum(int(r["prompt_tokens"]) for r in mine) == sums(today)["prompt_tokens"]
    assert sum(int(r["completion_tokens"]) for r in mine) == sums(today)["completion_tokens"]


def cli_export(stack: LocalStack, what: str, fmt: str, day: date) -> str:
    result = cli(stack, "export", "--what", what, "--format", fmt, "--since", str(day), "--until", str(day))
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- exactly once under SIGKILL between commit and ack (b) ---------------------------------------
CRASH_ROLE = "usage_crash_test"


async def _sync_rep(db: asyncpg.Connection, standby: str) -> None:
    # Commits of sessions with synchronous_commit=on wait for this (nonexistent) standby.
    if standby:
        await db.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{standby}'")
    else:
        await db.execute("ALTER SYSTEM RESET synchronous_standby_names")
    await db.execute("SELECT pg_reload_conf()")


async def _waiting_commits(db: asyncpg.Connection) -> int:
    # The usage projection's commit: the jobs projection also consumes terminal events, and its
    # commit waiting alone does not mean the usage rows were sent (a transaction waiting for the
    # standby still holds its table locks).
    sql = """SELECT count(*) FROM pg_stat_activity a
             WHERE a.usename = $1 AND a.wait_event = 'SyncRep'
               AND EXISTS (SELECT 1 FROM pg_locks l
                           WHERE l.pid = a.pid AND l.relation = 'usage.requests'::regclass)"""
    return int(await db.fetchval(sql, CRASH_ROLE))


async def _count_rows(db: asyncpg.Connection, ids: list[str]) -> int:
    sql = "SELECT count(*) FROM usage.requests WHERE request_id = ANY($1::text[])"
    return int(await db.fetchval(sql, ids))


async def test_sigkill_between_commit_and_ack_leaves_one_row_each(
    stack: LocalStack, metrics: Metrics, admin: Client, db: asyncpg.Connection
) -> None:
    """Deterministic: the service runs as a role whose commits wait for a synchronous standby
    that does not exist (everyone else commits locally). Its batch's COMMIT is then written but
    unanswered, so it never acks; it gets SIGKILL; the standby requirement is lifted, the commit
    completes without its client, and a restarted service gets the events again (never acked)
    and must change nothing."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = mixed(user, 300)
    ids = [e.request_id for e in events]
    dsn = stack.env()["LLMCHAT_POSTGRES_DSN"].replace("://llmchat@", f"://{CRASH_ROLE}@")
    metrics.stop()
    await db.execute(f"DROP ROLE IF EXISTS {CRASH_ROLE}")
    await db.execute(f"CREATE ROLE {CRASH_ROLE} LOGIN SUPERUSER")
    await db.execute(f"ALTER ROLE {CRASH_ROLE} SET synchronous_commit = on")
    try:
        await db.execute("ALTER SYSTEM SET synchronous_commit = local")
        metrics.start(LLMCHAT_POSTGRES_DSN=dsn)
        await _sync_rep(db, "nonexistent_standby")
        last = await publish(admin, events)
        await eventually(lambda: _waiting_commits(db), timeout=30, what="a commit waiting for the standby")
        assert await _count_rows(db, ids) == 0  # not visible while the commit waits
        assert metrics.proc is not None
        metrics.proc.kill()
        metrics.proc = None
        await _sync_rep(db, "")
        committed = await eventually(lambda: _count_rows(db, ids), timeout=30, what="the orphaned commit")
    finally:
        await _sync_rep(db, "")
        await db.execute("ALTER SYSTEM RESET synchronous_commit")
        await db.execute("SELECT pg_reload_conf()")
    held = await consumer_info(admin)
    # Committed and never acked: JetStream still holds them as delivered, unacknowledged.
    assert (held.num_ack_pending or 0) >= committed, (held.num_ack_pending, committed)
    print(f"orphaned commit: {committed} rows, {held.num_ack_pending} events delivered and unacked")
    first = {r["request_id"]: r["projected_at"] for r in await rows_of(db, ids)}

    metrics.start()
    await caught_up(admin, last)
    rows = await rows_of(db, ids)
    assert len(rows) == len(ids)
    # The orphaned commit's rows are untouched by the redelivery...
    assert {r["request_id"]: r["projected_at"] for r in rows if r["request_id"] in first} == first
    # ...which did happen: the new process applied every event, those included.
    applied = metric(scrape(metrics.prom_port), "llmchat_consumer_events_total", consumer=DURABLE) or 0.0
    assert applied >= len(ids), (applied, committed)
    assert await daily_of(db, user) == expected_daily(events)
    with contextlib.suppress(asyncpg.PostgresError):
        await db.execute(f"DROP ROLE IF EXISTS {CRASH_ROLE}")


# -- Postgres away (c) -----------------------------------------------------------------------------
async def test_postgres_stopped_then_back_loses_and_doubles_nothing(
    stack: LocalStack, metrics: Metrics, admin: Client, db: asyncpg.Connection
) -> None:
    if metrics.proc is None:
        metrics.start()
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = mixed(user, 200)
    port = stack.ports.postgres
    errors_before = (
        metric(scrape(metrics.prom_port), "llmchat_consumer_errors_total", consumer=DURABLE) or 0.0
    )
    stack.stop_process("postgres")
    try:
        last = await publish(admin, events[:100])
        # Postgres stays away ~30 s under a trickle of events; the consumer keeps retrying
        # (its error counter moves) and the process stays up.
        deadline = time.monotonic() + 30
        published = 100
        while time.monotonic() < deadline:
            assert metrics.proc is not None and metrics.proc.poll() is None, (
                metrics.proc.tail() if metrics.proc else ""
            )
            if published < len(events):
                last = await publish(admin, events[published : published + 10])
                published += 10
            await asyncio.sleep(1.0)
        errors = metric(scrape(metrics.prom_port), "llmchat_consumer_errors_total", consumer=DURABLE) or 0.0
        assert errors > errors_before
    finally:
        stack.start_postgres(port=port)
    fresh = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        await caught_up(admin, last, timeout=90)
        rows = await wait_rows(fresh, [e.request_id for e in events], timeout=30)
        assert len({r["request_id"] for r in rows}) == len(events)
        assert await daily_of(fresh, user) == expected_daily(events)
    finally:
        await fresh.close()
    assert rpc_ping(stack, subjects.usage_subject("ping"))


# -- replay reproduces the live projection (d) ------------------------------------------------
TABLE_KEYS = {"requests": "request_id", "daily": "user_id, model, day, status"}


async def table(conn: asyncpg.Connection, schema: str, name: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(f'SELECT * FROM "{schema}"."{name}" ORDER BY {TABLE_KEYS[name]}')
    return [{k: v for k, v in dict(r).items() if k != "projected_at"} for r in rows]


async def erased_requests(conn: asyncpg.Connection, target: str, admin: Client) -> dict[str, set[Any]]:
    """The live usage rows the replay lacks, each checked to be gone from the log (no terminal
    event left): their request ids, and the daily keys they count in."""
    rows = await conn.fetch(
        f'SELECT request_id, user_id, model, day, status FROM "{SCHEMA}".requests l WHERE NOT EXISTS '
        f'(SELECT 1 FROM "{target}".requests r WHERE r.request_id = l.request_id)'
    )
    for row in rows:
        ended, _ = await outcome(admin.jetstream(), row["request_id"])
        assert not ended, f"{row['request_id']} is in the log but not in the replay"
    return {
        "requests": {row["request_id"] for row in rows},
        "daily": {(row["user_id"], row["model"], row["day"], row["status"]) for row in rows},
    }


def without(rows: list[dict[str, Any]], erased: dict[str, set[Any]], name: str) -> list[dict[str, Any]]:
    """The rows of table `name` (`requests`, `daily`) that erased requests have no part in."""
    if name == "requests":
        return [r for r in rows if r["request_id"] not in erased["requests"]]
    return [r for r in rows if (r["user_id"], r["model"], r["day"], r["status"]) not in erased["daily"]]


async def test_replay_into_an_empty_schema_reproduces_the_live_projection(
    stack: LocalStack, metrics: Metrics, admin: Client
) -> None:
    if metrics.proc is None:
        metrics.start()
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = mixed(user, 30)
    last = await publish(admin, events)
    await publish(admin, events[:5], fresh_ids=True)  # copies in the log, as in production
    last = await publish(admin, [terminal(user)])
    await caught_up(admin, last)

    target = f"usage_replay_{uuid.uuid4().hex[:8]}"
    result = cli(stack, "replay", "--since", "2000-01-01", "--target", target)
    assert result.returncode == 0, result.stderr
    assert "replayed" in result.stdout

    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        # Requests erased from the log (deleted conversations, erased users: test_forgetting)
        # keep their usage rows, the billing record; a replay cannot bring them back. Every
        # other row is reproduced exactly, and so are the daily sums they alone make up.
        erased = await erased_requests(conn, target, admin)
        for name in ("requests", "daily"):
            live = await table(conn, SCHEMA, name)
            replayed = await table(conn, target, name)
            assert len(live) > 0
            assert without(replayed, erased, name) == without(live, erased, name), f"{name} differs"
        # A second replay into the same (now full) schema is refused; --reset rebuilds it.
        again = cli(stack, "replay", "--since", "2000-01-01", "--target", target)
        assert again.returncode == 1 and "not empty" in again.stderr
        assert cli(stack, "replay", "--since", "2000-01-01", "--target", "usage").returncode == 1
        reset = cli(stack, "replay", "--since", "2000-01-01", "--target", target, "--reset")
        assert reset.returncode == 0, reset.stderr
        live_requests = without(await table(conn, SCHEMA, "requests"), erased, "requests")
        assert await table(conn, target, "requests") == live_requests
        await conn.execute(f'DROP SCHEMA "{target}" CASCADE')
    finally:
        await conn.close()


# -- export of raw events, Prometheus ---------------------------------------------------------
async def test_export_events_and_prometheus_metrics(
    stack: LocalStack, metrics: Metrics, admin: Client
) -> None:
    if metrics.proc is None:
        metrics.start()
    user = f"user-{uuid.uuid4().hex[:8]}"
    model = f"prom-{uuid.uuid4().hex[:6]}"
    events = [
        terminal(user, model=model, prompt=10, out=2),
        terminal(user, model=model, status="failed", prompt=3, out=1),
    ]
    last = await publish(admin, events)
    await caught_up(admin, last)

    lines = cli_export(stack, "events", "jsonl", TODAY).splitlines()
    exported = {json.loads(line)["request_id"]: json.loads(line) for line in lines}
    for e in events:
        assert exported[e.request_id]["event"]["type"] == e.type

    async def scraped() -> str | None:
        text = scrape(metrics.prom_port)
        return text if metric(text, "llmchat_usage_tokens_total", model=model, kind="prompt") == 13 else None

    try:
        text = await eventually(scraped, timeout=20, what="usage metrics for the new model")
    except AssertionError:
        raise AssertionError(scrape(metrics.prom_port)) from None
    assert metric(text, "llmchat_usage_tokens_total", model=model, kind="completion") == 3
    assert metric(text, "llmchat_usage_requests_total", model=model, status="completed") == 1
    assert metric(text, "llmchat_usage_requests_total", model=model, status="failed") == 1
    assert (metric(text, "llmchat_consumer_events_total", consumer=DURABLE) or 0) > 0
    assert "user_id" not in text

    # SIGTERM stops it cleanly (exit 0).
    assert metrics.proc is not None
    metrics.proc.signal(signal.SIGTERM)
    wait_until(
        lambda: metrics.proc is not None and metrics.proc.poll() is not None, timeout=30, what="metrics stop"
    )
    assert metrics.proc.poll() == 0, metrics.proc.tail()
    metrics.stop()
