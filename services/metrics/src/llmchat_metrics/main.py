"""The metrics process: migrations, the projection consumers (usage from CHAT_EVENTS; jobs from
CHAT_REQUESTS and CHAT_EVENTS), the usage and jobs RPC operations and the Prometheus endpoint
(business metrics, consumer and RPC metrics, one default registry), until SIGTERM/SIGINT.

Readiness is answering `usage.v1.rpc.ping`; containers can watch LLMCHAT_METRICS_HEALTH_FILE,
touched while the database answers and the consumer loop is alive. Exit codes: 0 after a clean
stop, 1 when start-up failed.

If a consumer loop fails unexpectedly (NATS errors the loop does not absorb, a consumer
deleted under it), it is logged at ERROR and restarted with exponential backoff (1 s up to
`consumer_restart_max_s`), and counted in `llmchat_consumer_restarts_total`: nothing is lost
while it is down (unacked events wait in the durable consumer), and it is never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from faststream.nats import NatsBroker
from opentelemetry.instrumentation.utils import suppress_instrumentation
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common import consumer_telemetry
from llmchat_common.db import create_engine, upgrade_schema, wait_for_database
from llmchat_common.lifecycle import connect_broker, run_process, serve_until_stopped
from llmchat_common.messaging import ensure_streams, jetstream, make_broker, nats_client
from llmchat_common.projection import REQUESTS_SOURCE, LogConsumer, ProjectionConsumer
from llmchat_common.telemetry import serve_metrics, stop_metrics
from llmchat_metrics.handlers import register_handlers
from llmchat_metrics.jobs import JobEventsProjection, JobRequestsProjection
from llmchat_metrics.models import SCHEMA
from llmchat_metrics.projection import UsageProjection
from llmchat_metrics.prometheus import SnapshotHolder, UsageCollector
from llmchat_metrics.service import UsageService
from llmchat_metrics.settings import MetricsSettings

log = logging.getLogger(__name__)

# A run that lasted this long was healthy: the next failure starts the backoff afresh.
_HEALTHY_RUN_S = 60.0


def migrations_location() -> str:
    """The Alembic scripts, shipped inside the package."""
    return str(files("llmchat_metrics") / "migrations")


def open_database(settings: MetricsSettings) -> AsyncEngine:
    return create_engine(settings.postgres, pool_size=settings.db_pool_size)


async def migrate(engine: AsyncEngine, settings: MetricsSettings, *, schema: str = SCHEMA) -> None:
    await wait_for_database(engine, timeout_s=settings.startup_timeout_s)
    await upgrade_schema(engine, migrations_location(), schema=schema)


@dataclass
class Supervisor:
    """Keeps the consumer loop running; see the module docstring."""

    consumer: LogConsumer[Any]
    max_backoff_s: float
    restarts: int = 0

    async def run(self) -> None:
        delay = 1.0
        while True:
            started = time.monotonic()
            try:
                await self.consumer.run()
                raise RuntimeError("the consumer loop returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, counted, restarted
                if time.monotonic() - started > _HEALTHY_RUN_S:
                    delay = 1.0
                self.restarts += 1
                consumer_telemetry.RESTARTS.labels(self.consumer.durable).inc()
                log.error(
                    "projection consumer failed; restarting",
                    extra={
                        "consumer": self.consumer.durable,
                        "error": type(exc).__name__,
                        "detail": str(exc)[:200],
                        "retry_in_s": delay,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)


@dataclass
class MetricsApp:
    settings: MetricsSettings
    engine: AsyncEngine
    broker: NatsBroker
    # The projection's own connection: a pull subscription would hold the RPC broker's drain
    # at stop (nats-py waits for every subscription to drain), and bulk fetches and acks stay
    # off the connection that answers requests.
    feed: NatsBroker
    service: UsageService
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def probe(self) -> None:
        """Healthy: the database answers and no background task has ended. (No query span: a
        probe every few seconds would be a trace of its own each time.)"""
        with suppress_instrumentation():
            await self.service.ping()
        for task in self.tasks:
            if task.done():
                raise RuntimeError(f"{task.get_name()} ended")


def create_app(settings: MetricsSettings | None = None) -> MetricsApp:
    """Objects only; connections are made in `lifespan`."""
    settings = settings or MetricsSettings()
    engine = open_database(settings)
    return MetricsApp(
        settings,
        engine,
        make_broker(settings.nats, name="metrics"),
        make_broker(settings.nats, name="metrics-projection"),
        UsageService(engine),
    )


@asynccontextmanager
async def lifespan(app: MetricsApp) -> AsyncIterator[MetricsApp]:
    settings = app.settings
    server = None
    collector = None
    try:
        server = serve_metrics(settings.prometheus_host, settings.prometheus_port)
        await migrate(app.engine, settings)
        await connect_broker(app.broker, settings.startup_timeout_s)
        await connect_broker(app.feed, settings.startup_timeout_s)
        js = jetstream(app.feed)
        await ensure_streams(js, settings.nats)
        consumers: list[LogConsumer[Any]] = [
            ProjectionConsumer(js, app.engine, UsageProjection(), settings.projection),
            LogConsumer(js, app.engine, JobRequestsProjection(), settings.projection, source=REQUESTS_SOURCE),
            ProjectionConsumer(js, app.engine, JobEventsProjection(), settings.projection),
        ]
        supervisors = [Supervisor(c, settings.consumer_restart_max_s) for c in consumers]
        for consumer, supervisor in zip(consumers, supervisors, strict=True):
            # Here rather than in the loop only: a refused consumer fails the start, visibly.
            await consumer.ensure_consumer()
            app.tasks.append(asyncio.create_task(supervisor.run(), name=consumer.durable))
        if server is not None:
            holder = SnapshotHolder()
            app.tasks.append(
                asyncio.create_task(
                    holder.refresh_forever(app.engine, settings.snapshot_interval_s), name="metrics-snapshot"
                )
            )
            collector = UsageCollector(lambda: holder.snapshot)
            REGISTRY.register(collector)
        register_handlers(app.broker, app.service, max_workers=settings.max_concurrency)
        # Subscribing is the last step: a ping answered means everything above is in place.
        await app.broker.start()
        log.info(
            "metrics ready",
            extra={"prometheus_port": settings.prometheus_port, "batch_size": settings.projection.batch_size},
        )
        yield app
    finally:
        # A cancelled batch is not acked: whoever runs next gets it again (and it changes
        # nothing if it was committed).
        for task in app.tasks:
            task.cancel()
        for task in app.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(stop_metrics, server)
        if collector is not None:
            REGISTRY.unregister(collector)
        # Closed, not drained: the cancelled loop's pull subscription has nothing to finish
        # (unacked events are redelivered).
        if app.feed.connection is not None:
            with contextlib.suppress(Exception):
                await nats_client(app.feed).close()
        await app.broker.stop()
        await app.engine.dispose()


async def serve(settings: MetricsSettings) -> None:
    await serve_until_stopped(
        lifespan(create_app(settings)), health_file=settings.health_file, probe=MetricsApp.probe
    )


def run(settings: MetricsSettings | None = None) -> int:
    return run_process("metrics", lambda: settings or MetricsSettings(), serve, lambda s: s.log)
