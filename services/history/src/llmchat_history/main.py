"""The history process: migrations, the projection consumer, then the NATS subscribers until
SIGTERM/SIGINT; Prometheus metrics (consumer, RPC) on `prometheus_port`.

No HTTP port: readiness is answering `history.v1.rpc.ping`; containers can watch
LLMCHAT_HISTORY_HEALTH_FILE, touched while serving with the database reachable. Exit codes: 0
after a clean stop, 1 when start-up failed (Postgres or NATS unreachable before the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib.resources import files

from faststream.nats import NatsBroker
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common import consumer_telemetry
from llmchat_common.db import create_engine, upgrade_schema, wait_for_database
from llmchat_common.forgetting import forget_requests
from llmchat_common.lifecycle import connect_broker, run_process, serve_until_stopped
from llmchat_common.messaging import (
    cancels_kv,
    ensure_streams,
    files_store,
    jetstream,
    make_broker,
    nats_client,
)
from llmchat_common.projection import ProjectionConsumer
from llmchat_common.telemetry import serve_metrics, stop_metrics
from llmchat_history.batches import BatchCoordinator, BatchLinesProjection
from llmchat_history.erasing import Eraser
from llmchat_history.handlers import register_handlers
from llmchat_history.models import SCHEMA
from llmchat_history.projection import HistoryProjection, TitlePublisher
from llmchat_history.service import HistoryService
from llmchat_history.settings import HistorySettings

log = logging.getLogger(__name__)

RESTART_MAX_S = 10.0


def migrations_location() -> str:
    """The Alembic scripts, shipped inside the package."""
    return str(files("llmchat_history") / "migrations")


async def migrate(engine: AsyncEngine, settings: HistorySettings, *, schema: str = SCHEMA) -> None:
    await wait_for_database(engine, timeout_s=settings.startup_timeout_s)
    await upgrade_schema(engine, migrations_location(), schema=schema)


def open_engine(settings: HistorySettings) -> AsyncEngine:
    return create_engine(settings.postgres, pool_size=settings.db_pool_size)


@dataclass
class HistoryApp:
    settings: HistorySettings
    engine: AsyncEngine
    broker: NatsBroker
    consumer: ProjectionConsumer | None = None


def create_app(settings: HistorySettings | None = None) -> HistoryApp:
    """Objects only; connections are made in `lifespan`."""
    settings = settings or HistorySettings()
    return HistoryApp(settings, open_engine(settings), make_broker(settings.nats, name="history"))


async def keep_consuming(consumer: ProjectionConsumer) -> None:
    """The consumer retries the database by itself; a broken NATS connection ends its loop,
    which restarts here (unacked events are redelivered: nothing is lost)."""
    delay = 0.5
    while True:
        try:
            await consumer.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged and restarted
            consumer_telemetry.RESTARTS.labels(consumer.durable).inc()
            log.warning("projection consumer stopped; restarting", extra={"error": type(exc).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)


@asynccontextmanager
async def lifespan(app: HistoryApp) -> AsyncIterator[HistoryService]:
    settings = app.settings
    tasks: list[asyncio.Task[None]] = []
    started = False
    metrics = None
    try:
        metrics = serve_metrics(settings.prometheus_host, settings.prometheus_port)
        await migrate(app.engine, settings)
        await connect_broker(app.broker, settings.startup_timeout_s)
        js = jetstream(app.broker)
        await ensure_streams(js, settings.nats)
        eraser = Eraser(
            app.engine,
            partial(forget_requests, nats_client(app.broker)),
            interval_s=settings.erase_interval_s,
            retention_s=settings.nats.events_max_age_s,
        )
        projection = HistoryProjection(
            titles=settings.titles, collect=True, title_model=settings.title_model, erase_late=True
        )
        titles = TitlePublisher(js, app.engine, projection, title_timeout_s=settings.title_timeout_s)
        app.consumer = ProjectionConsumer(
            js, app.engine, projection, settings.projection, after_commit=titles.publish_pending
        )
        await app.consumer.ensure_consumer()
        tasks.append(asyncio.create_task(keep_consuming(app.consumer), name="history-projection"))
        lines = ProjectionConsumer(js, app.engine, BatchLinesProjection(), settings.projection)
        await lines.ensure_consumer()
        tasks.append(asyncio.create_task(keep_consuming(lines), name="batch-lines"))
        coordinator = BatchCoordinator(
            app.engine,
            nats_client(app.broker),
            js,
            await cancels_kv(js, settings.nats.replicas),
            await files_store(js, settings.nats.replicas),
            max_in_flight=settings.batch_max_in_flight,
            tick_s=settings.batch_tick_s,
        )
        tasks.append(asyncio.create_task(coordinator.run(), name="batch-coordinator"))
        tasks.append(asyncio.create_task(eraser.run(), name="history-eraser"))
        service = HistoryService(app.engine, erase_soon=eraser.wake)
        register_handlers(app.broker, service, coordinator, max_workers=settings.max_concurrency)
        # Subscribing is the last step: a ping answered means everything above is in place.
        await app.broker.start()
        started = True
        log.info("history ready", extra={"titles": settings.titles})
        yield service
    finally:
        # A batch cut short is not acked: it is redelivered to whoever runs next. An erasure cut
        # short stays queued.
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app.broker.stop()
        await app.engine.dispose()
        await asyncio.to_thread(stop_metrics, metrics)
        if started:
            log.info("history stopped")


async def probe(service: HistoryService) -> object:
    """The health probe: no query span (one every few seconds would each be a trace)."""
    with suppress_instrumentation():
        return await service.ping()


async def serve(settings: HistorySettings) -> None:
    await serve_until_stopped(lifespan(create_app(settings)), health_file=settings.health_file, probe=probe)


def run(settings: HistorySettings | None = None) -> int:
    return run_process("history", lambda: settings or HistorySettings(), serve, lambda s: s.log)
