"""The process shape of the services without an HTTP port (auth, history, metrics): connect
with retries while the infrastructure starts, run until SIGTERM/SIGINT, keep a health file
fresh for container probes, and exit 0 after a clean stop or 1 when start-up failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import TypeVar

from faststream.nats import NatsBroker

from llmchat_common.logging import install_task_dump, setup_logging
from llmchat_common.settings import LogSettings
from llmchat_common.telemetry import setup_telemetry, shutdown_telemetry

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 5.0
T = TypeVar("T")
S = TypeVar("S")


async def connect_broker(broker: NatsBroker, timeout_s: float) -> None:
    """NATS may still be starting: retry the first connection until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await broker.connect()
            return
        except Exception as exc:  # nats-py raises several kinds
            if time.monotonic() + 1.0 > deadline:
                raise
            log.info("waiting for nats", extra={"error": type(exc).__name__})
            await asyncio.sleep(1.0)


async def touch_health(path: Path, probe: Callable[[], Awaitable[object]]) -> None:
    """Touched while `probe` succeeds (e.g. the database answers): a container health probe."""
    while True:
        try:
            await asyncio.wait_for(probe(), timeout=HEALTH_INTERVAL_S)
            await asyncio.to_thread(path.touch)
        except Exception as exc:  # noqa: BLE001 - the stale file is the report
            log.warning("health check failed", extra={"error": type(exc).__name__})
        await asyncio.sleep(HEALTH_INTERVAL_S)


async def serve_until_stopped(
    lifespan: AbstractAsyncContextManager[T],
    *,
    health_file: Path | None,
    probe: Callable[[T], Awaitable[object]],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    install_task_dump()
    async with lifespan as running:
        health = None
        if health_file is not None:
            health = asyncio.create_task(touch_health(health_file, lambda: probe(running)))
        await stop.wait()
        log.info("stopping")
        if health is not None and health_file is not None:
            health.cancel()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(health_file.unlink, missing_ok=True)


class CommandRefused(Exception):
    """An operator command that must not proceed; the message says why (exit 1)."""


def parse_time(value: str, *, end_of_day: bool = False) -> datetime:
    """A command's time argument: Unix seconds, an ISO time (UTC unless it says otherwise) or an
    ISO date, which means its midnight UTC, or with `end_of_day` the next midnight (so
    `--until 2026-12-01` includes that day). ValueError when it is none of these."""
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        day = date.fromisoformat(value)
    except ValueError:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    midnight = datetime.combine(day, time_of_day(), tzinfo=UTC)
    return midnight + timedelta(days=1) if end_of_day else midnight


def run_command(
    name: str,
    load_settings: Callable[[], S],
    log_settings: Callable[[S], LogSettings],
    command: Callable[[S], Awaitable[int]],
) -> int:
    """An operator command (`python -m llmchat_<service> <command>`): the service's settings and
    logging, one event loop; a refusal or a failure is one line on stderr and exit 1, never a
    traceback."""
    settings = _load(load_settings)
    if settings is None:
        return 1
    setup_logging(name, log_settings(settings))
    try:
        return asyncio.run(command(settings))  # type: ignore[arg-type]
    except CommandRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    except Exception as exc:  # noqa: BLE001 - an operator gets a line, not a traceback
        print(f"failed: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        return 1


def _load(load_settings: Callable[[], S]) -> S | None:
    try:
        return load_settings()
    except ValueError as exc:
        print(f"refused settings: {exc}", file=sys.stderr)
        return None


def run_process(
    name: str,
    load_settings: Callable[[], S],
    serve: Callable[[S], Awaitable[None]],
    log_settings: Callable[[S], LogSettings],
) -> int:
    settings = _load(load_settings)
    if settings is None:
        return 1
    setup_logging(name, log_settings(settings))
    setup_telemetry(name)
    try:
        asyncio.run(serve(settings))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - reported, then a non-zero exit
        log.critical(f"{name} failed", extra={"error": type(exc).__name__, "detail": str(exc)[:300]})
        return 1
    finally:
        shutdown_telemetry()
    return 0
