"""`python -m llmchat_metrics [command]` (also `llmchat-metrics`); no command serves.

Commands read the same settings (environment) as the service and connect as its NATS user.
Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import IO, Any

from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tqdm import tqdm

from llmchat_common.db import check_schema_name, upgrade_schema
from llmchat_common.lifecycle import CommandRefused, connect_broker, parse_time, run_command
from llmchat_common.messaging import jetstream, make_broker
from llmchat_common.projection import REQUESTS_SOURCE
from llmchat_common.replay import ReplayResult, replay, replay_source
from llmchat_metrics.export import (
    EVENT_COLUMNS,
    USAGE_COLUMNS,
    Writer,
    count_usage_rows,
    event_record,
    log_span,
    read_events,
    usage_rows,
)
from llmchat_metrics.jobs import JobEventsProjection, JobRequestsProjection
from llmchat_metrics.main import migrate, migrations_location, open_database, run
from llmchat_metrics.models import SCHEMA
from llmchat_metrics.projection import UsageProjection
from llmchat_metrics.settings import MetricsSettings

# Schemas a replay must never write into (--reset would drop them).
PROTECTED_SCHEMAS = frozenset({SCHEMA, "auth", "history", "public", "information_schema", "pg_catalog"})
_OURS = frozenset({"requests", "daily", "jobs", "alembic_version"})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmchat-metrics", description="llmchat metrics service and its tools")
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.add_parser("serve", help="run the service (the default)")
    sub.add_parser("migrate", help="create or upgrade schema usage, then exit")
    rp = sub.add_parser("replay", help="rebuild the usage and jobs projections from the log into a schema")
    rp.add_argument("--since", required=True, help="ISO time or date (UTC) of the first event")
    rp.add_argument("--until", help="ISO time or date (a date includes that day); default: now")
    rp.add_argument("--target", default="usage_replay", help="schema to build (default usage_replay)")
    rp.add_argument("--reset", action="store_true", help="drop and recreate the target schema first")
    ex = sub.add_parser("export", help="stream usage rows or raw events as JSON lines or CSV")
    ex.add_argument("--since", required=True, help="ISO time or date (UTC)")
    ex.add_argument("--until", required=True, help="ISO time or date (a date includes that day)")
    ex.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ex.add_argument("--what", choices=("usage", "events"), default="usage")
    ex.add_argument("--output", default="-", help="file to write, or - for stdout (default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        return run()
    commands = {"migrate": _migrate, "replay": _replay, "export": _export}
    return run_command("metrics", MetricsSettings, lambda s: s.log, lambda s: commands[command](s, args))


@asynccontextmanager
async def _database(settings: MetricsSettings) -> AsyncIterator[AsyncEngine]:
    engine = open_database(settings)
    try:
        await migrate(engine, settings)
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def _jetstream(settings: MetricsSettings) -> AsyncIterator[JetStreamContext]:
    broker = make_broker(settings.nats, name="metrics-cli")
    try:
        await connect_broker(broker, min(settings.startup_timeout_s, 10.0))
        yield jetstream(broker)
    finally:
        await broker.stop()


def _progress(total: int | None, unit: str) -> Any:
    """A bar on a terminal only: redirected output (cron, pipes) gets none."""
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)


async def _migrate(settings: MetricsSettings, args: argparse.Namespace) -> int:
    async with _database(settings):
        print(f"schema {SCHEMA} is up to date")
    return 0


def _times(args: argparse.Namespace) -> tuple[datetime, datetime | None]:
    try:
        since = parse_time(args.since)
        until = parse_time(args.until, end_of_day=True) if args.until else None
    except ValueError as exc:
        raise CommandRefused(f"not a time or date: {exc}") from exc
    if until is not None and until <= since:
        raise CommandRefused("--until is not after --since")
    return since, until


async def _count(conn: AsyncConnection, schema: str, table: str) -> int:
    # Identifiers cannot be bound: `schema` passed check_schema_name, `table` is ours.
    sql = f'SELECT count(*) FROM "{check_schema_name(schema)}"."{table}"'  # noqa: S608
    return int((await conn.execute(text(sql))).scalar_one())


async def _prepare_target(engine: AsyncEngine, target: str, *, reset: bool) -> None:
    quoted = f'"{target}"'
    async with engine.begin() as conn:
        if reset:
            await conn.execute(text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))
            return
        tables = set(
            (
                await conn.execute(
                    text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": target},
                )
            ).scalars()
        )
        if tables - _OURS:
            raise CommandRefused(f"schema {target} holds other tables; pick another --target")
        for table in ("requests", "daily", "jobs"):
            if table in tables and await _count(conn, target, table):
                raise CommandRefused(f"schema {target} is not empty; add --reset to rebuild it")


async def _replay(settings: MetricsSettings, args: argparse.Namespace) -> int:
    try:
        target = check_schema_name(args.target)
    except ValueError as exc:
        raise CommandRefused(str(exc)) from exc
    if target in PROTECTED_SCHEMAS or target.startswith("pg_"):
        raise CommandRefused(f"schema {target} is not a replay target")
    since, until = _times(args)
    async with _database(settings) as engine, _jetstream(settings) as js:
        await _prepare_target(engine, target, reset=args.reset)
        await upgrade_schema(engine, migrations_location(), schema=target)
        schema_map: dict[str | None, str | None] = {SCHEMA: target}
        with _progress(None, "seq") as bar:

            def progress(last_seq: int, end_seq: int) -> None:
                bar.total = end_seq
                bar.n = last_seq
                bar.refresh()

            result = await replay(
                js,
                engine,
                UsageProjection(),
                since=since,
                until=until,
                schema_map=schema_map,
                progress=progress,
            )
        # Jobs: the requests, then their events (the merge does not depend on the order).
        jobs = [
            await replay_source(
                js,
                engine,
                JobRequestsProjection(),
                REQUESTS_SOURCE,
                since=since,
                until=until,
                schema_map=schema_map,
            ),
            await replay(js, engine, JobEventsProjection(), since=since, until=until, schema_map=schema_map),
        ]
        async with engine.connect() as conn:
            counts = {t: await _count(conn, target, t) for t in ("requests", "daily", "jobs")}
    print(
        f"replayed {result.events} events in {result.batches} batches into schema {target}: "
        f"{counts['requests']} request rows, {counts['daily']} daily rows (log up to seq {result.last_seq}); "
        f"{_jobs_summary(jobs)}, {counts['jobs']} job rows"
    )
    return 0


def _jobs_summary(results: list[ReplayResult]) -> str:
    requests, events = results
    return f"jobs from {requests.events} requests and {events.events} events"


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8", newline="") as handle:
        yield handle


async def _export(settings: MetricsSettings, args: argparse.Namespace) -> int:
    since, until = _times(args)
    assert until is not None
    written = 0
    with _output(args.output) as out:
        if args.what == "usage":
            async with _database(settings) as engine:
                total = await count_usage_rows(engine, since, until) if sys.stderr.isatty() else None
                writer = Writer(out, args.format, USAGE_COLUMNS)
                with _progress(total, "row") as bar:
                    async for row in usage_rows(engine, since, until):
                        writer.write(row)
                        written += 1
                        bar.update(1)
        else:
            async with _jetstream(settings) as js:
                first, last = await log_span(js)
                writer = Writer(out, args.format, EVENT_COLUMNS)
                with _progress(max(last - first + 1, 0), "ev") as bar:
                    async for raw in read_events(js, since, until):
                        writer.write(event_record(raw))
                        written += 1
                        bar.n = raw.stream_seq - first + 1
                        bar.refresh()
    print(f"exported {written} {'rows' if args.what == 'usage' else 'events'}", file=sys.stderr)
    return 0
