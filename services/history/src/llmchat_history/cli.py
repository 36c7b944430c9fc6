"""`python -m llmchat_history [command]` (also `llmchat-history`); no command serves.

Commands read the same settings (environment) as the service. Exit codes: 0 done, 1 refused
or failed, 2 usage.

`replay` rebuilds the projection from the event log into another schema (default
`history_replay`) with the live projection's own code. Renames and deletes are not in the log:
the conversations users renamed or deleted are copied from the live schema first, and the
replayed events then merge into them as they did live. Replay never requests titles (the
model's titles are in the log as title answers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text

from llmchat_common.db import check_schema_name
from llmchat_common.lifecycle import CommandRefused, connect_broker, parse_time, run_command
from llmchat_common.messaging import jetstream, make_broker
from llmchat_common.replay import ReplayResult, replay
from llmchat_history import repository as repo
from llmchat_history.main import migrate, open_engine, run
from llmchat_history.models import SCHEMA
from llmchat_history.projection import HistoryProjection
from llmchat_history.settings import HistorySettings

DEFAULT_TARGET = "history_replay"


def time_argument(value: str) -> datetime:
    """ISO 8601 (a date, or a date and time; without a zone it is UTC) or Unix seconds."""
    try:
        return parse_time(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a time: {value!r} (ISO 8601 or Unix seconds)") from exc


def target_schema(value: str) -> str:
    """`history_<name>` only: `--reset` drops the target, which must never be the live schema
    or another service's."""
    try:
        check_schema_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not value.startswith(f"{SCHEMA}_"):
        raise argparse.ArgumentTypeError(
            f"the target schema must be named {SCHEMA}_<name>, e.g. {DEFAULT_TARGET}"
        )
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmchat-history", description="llmchat history service and its commands"
    )
    sub = p.add_subparsers(dest="command", metavar="command")
    sub.add_parser("serve", help="run the service (the default)")
    sub.add_parser("migrate", help="create or upgrade schema history, then exit")
    r = sub.add_parser("replay", help="rebuild the projection from the event log into another schema")
    r.add_argument("--since", required=True, type=time_argument, help="first event time (ISO 8601 or Unix s)")
    r.add_argument("--until", type=time_argument, help="last event time (default: the log's end at start)")
    r.add_argument(
        "--target", default=DEFAULT_TARGET, type=target_schema, help=f"schema (default {DEFAULT_TARGET})"
    )
    r.add_argument("--reset", action="store_true", help="drop the target schema first")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        return run()
    if command == "migrate":
        return run_command("history", HistorySettings, lambda s: s.log, _migrate)
    return run_command("history", HistorySettings, lambda s: s.log, lambda s: _replay(s, args))


async def _migrate(settings: HistorySettings) -> int:
    engine = open_engine(settings)
    try:
        await migrate(engine, settings)
    finally:
        await engine.dispose()
    print(f"schema {SCHEMA} is up to date")
    return 0


def _progress_bar() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm bar over stream sequence numbers when stderr is a terminal, else nothing."""
    if not sys.stderr.isatty():
        return (lambda _seq, _end: None), (lambda: None)
    from tqdm import tqdm

    bar: Any = None

    def update(seq: int, end: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=end, unit="seq", desc="replay", file=sys.stderr)
        bar.update(max(0, min(seq, end) - bar.n))

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


async def _replay(settings: HistorySettings, args: argparse.Namespace) -> int:
    target: str = args.target
    if target == SCHEMA:
        raise CommandRefused(f"the target must not be the live schema {SCHEMA}")
    engine = open_engine(settings)
    broker = make_broker(settings.nats, name="history-replay")
    update, close = _progress_bar()
    try:
        await migrate(engine, settings)  # the live schema the user state is copied from
        if args.reset:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{target}" CASCADE'))
        await migrate(engine, settings, schema=target)
        async with engine.begin() as conn:
            if await repo.row_count(conn, target):
                raise CommandRefused(f"schema {target} is not empty (use --reset to rebuild it)")
            copied = await repo.copy_user_state(conn, SCHEMA, target)
        await connect_broker(broker, min(settings.startup_timeout_s, 10.0))
        projection = HistoryProjection(titles=settings.titles, collect=False)
        result: ReplayResult = await replay(
            jetstream(broker),
            engine,
            projection,
            since=args.since,
            until=args.until,
            schema_map={SCHEMA: target},
            batch_size=settings.projection.batch_size,
            progress=update,
        )
    finally:
        close()
        await broker.stop()
        await engine.dispose()
    print(
        f"replayed {result.events} events in {result.batches} batches into schema {target} "
        f"(up to stream seq {result.last_seq}; {copied} renamed or deleted conversations copied)"
    )
    return 0
