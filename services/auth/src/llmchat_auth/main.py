"""The auth process: migrations, signing key, then the NATS subscribers until SIGTERM/SIGINT;
Prometheus metrics (RPC) on `prometheus_port`.

No HTTP port: readiness is answering `auth.v1.rpc.ping`; containers can watch
LLMCHAT_AUTH_HEALTH_FILE, touched while serving with the database reachable. Exit codes: 0
after a clean stop, 1 when start-up failed (Postgres or NATS unreachable before the deadline).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

from faststream.nats import NatsBroker
from opentelemetry.instrumentation.utils import suppress_instrumentation

from llmchat_auth.handlers import KvRevocations, register_handlers
from llmchat_auth.keyring import KeyRing
from llmchat_auth.models import SCHEMA
from llmchat_auth.passwords import Passwords
from llmchat_auth.repository import Database
from llmchat_auth.service import AuthService, Revocations, utcnow
from llmchat_auth.settings import AuthSettings
from llmchat_common.db import create_engine, upgrade_schema, wait_for_database
from llmchat_common.lifecycle import connect_broker, run_process, serve_until_stopped
from llmchat_common.messaging import jetstream, make_broker, revocations_kv
from llmchat_common.telemetry import serve_metrics, stop_metrics

log = logging.getLogger(__name__)


def migrations_location() -> str:
    """The Alembic scripts, shipped inside the package."""
    return str(files("llmchat_auth") / "migrations")


async def migrate(db: Database, settings: AuthSettings) -> None:
    await wait_for_database(db.engine, timeout_s=settings.startup_timeout_s)
    await upgrade_schema(db.engine, migrations_location(), schema=SCHEMA)


def open_database(settings: AuthSettings) -> Database:
    return Database(create_engine(settings.postgres, pool_size=settings.db_pool_size))


def build_service(settings: AuthSettings, db: Database, revocations: Revocations) -> AuthService:
    keyring = KeyRing(
        db, cache_s=settings.key_cache_s, access_ttl_s=settings.tokens.access_ttl_s, clock=utcnow
    )
    return AuthService(settings, db, Passwords(settings), keyring, revocations)


@dataclass
class AuthApp:
    settings: AuthSettings
    db: Database
    broker: NatsBroker
    service: AuthService | None = None


def create_app(settings: AuthSettings | None = None) -> AuthApp:
    """Objects only; connections are made in `lifespan`."""
    settings = settings or AuthSettings()
    return AuthApp(settings, open_database(settings), make_broker(settings.nats, name="auth"))


@asynccontextmanager
async def lifespan(app: AuthApp) -> AsyncIterator[AuthService]:
    settings = app.settings
    started = False
    metrics = None
    try:
        metrics = serve_metrics(settings.prometheus_host, settings.prometheus_port)
        await migrate(app.db, settings)
        await connect_broker(app.broker, settings.startup_timeout_s)
        revocations = KvRevocations(await revocations_kv(jetstream(app.broker), settings.nats.replicas))
        service = build_service(settings, app.db, revocations)
        await service.prepare()
        register_handlers(app.broker, service, max_workers=settings.max_concurrency)
        # Subscribing is the last step: a ping answered means everything above is in place.
        await app.broker.start()
        app.service = service
        started = True
        log.info("auth ready", extra={"open_registration": settings.open_registration})
        yield service
    finally:
        # Stops taking requests and waits (bounded) for those in flight, then drains.
        await app.broker.stop()
        await app.db.dispose()
        await asyncio.to_thread(stop_metrics, metrics)
        if started:
            log.info("auth stopped")


async def probe(service: AuthService) -> object:
    """The health probe: no query span (one every few seconds would each be a trace)."""
    with suppress_instrumentation():
        return await service.ping()


async def serve(settings: AuthSettings) -> None:
    await serve_until_stopped(lifespan(create_app(settings)), health_file=settings.health_file, probe=probe)


def run(settings: AuthSettings | None = None) -> int:
    return run_process("auth", lambda: settings or AuthSettings(), serve, lambda s: s.log)
