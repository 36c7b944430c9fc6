"""Postgres helpers for the services that own a schema: the async engine from PostgresSettings,
and Alembic upgrades run programmatically under an advisory lock (replicas start at once).

Each service keeps its own migrations; its Alembic `env.py` calls `run_alembic_env`, so the
version table lives in the service's schema and the schema is created before it is needed.

Every query is a client span (OpenTelemetry's asyncpg instrumentation, switched on with the
first engine), a child of whatever span is current: an RPC, a projection batch. Spans carry the
SQL text, which holds placeholders only; bound values (emails, hashes, prompts) are never
recorded (`capture_parameters` stays off). Start-up work (waiting for Postgres, migrations) has
no query spans: each would be a trace of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any

from alembic import command, context
from alembic.config import Config
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from llmchat_common.settings import PostgresSettings

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def async_url(dsn: str) -> URL:
    """A plain `postgresql://` (or `postgres://`) DSN as SQLAlchemy's asyncpg URL."""
    url = make_url(dsn.replace("postgres://", "postgresql://", 1) if dsn.startswith("postgres://") else dsn)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL DSN: {url.render_as_string(hide_password=True)}")
    return url.set(drivername="postgresql+asyncpg")


def instrument_queries() -> None:
    """Query spans for every asyncpg connection of the process (once; later calls do nothing)."""
    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def create_engine(settings: PostgresSettings, *, pool_size: int = 5, max_overflow: int = 5) -> AsyncEngine:
    instrument_queries()
    # hide_parameters: statement errors would otherwise print bound values (hashes, emails) into
    # exception messages, and so into logs.
    return create_async_engine(
        async_url(settings.dsn),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        # A checkout waits at most this long for a free connection.
        pool_timeout=settings.connect_timeout_s + settings.statement_timeout_s,
        hide_parameters=True,
        connect_args={
            "timeout": settings.connect_timeout_s,
            # Client side: also when the server is stopped and cannot time itself out.
            "command_timeout": settings.statement_timeout_s + 1.0,
            "server_settings": {"statement_timeout": str(int(settings.statement_timeout_s * 1000))},
        },
    )


def advisory_lock_id(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_*lock from a readable name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


async def advisory_xact_lock(conn: AsyncConnection, name: str) -> None:
    """Held until the surrounding transaction ends."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock_id(name)})


async def wait_for_database(engine: AsyncEngine, *, timeout_s: float) -> None:
    """Postgres may still be starting (compose, make run): retry until the deadline."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            with suppress_instrumentation():
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            return
        except Exception as exc:  # asyncpg, SQLAlchemy and OS errors alike
            if time.monotonic() + delay > deadline:
                raise
            log.info("waiting for postgres", extra={"error": type(exc).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def check_schema_name(schema: str) -> str:
    if not _IDENT.match(schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    return schema


def alembic_config(script_location: str, *, schema: str) -> Config:
    """`script_location` may be a path or `package:folder` (migrations shipped as package data)."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.attributes["llmchat_schema"] = check_schema_name(schema)
    return cfg


def _migration_lock(schema: str) -> str:
    return f"llmchat:migrate:{schema}"


async def upgrade_schema(
    engine: AsyncEngine, script_location: str, *, schema: str, revision: str = "head"
) -> None:
    """Create the schema and upgrade it, in one transaction under an advisory lock: replicas
    starting together run the migrations once, the others wait and find them applied."""
    cfg = alembic_config(script_location, schema=schema)
    with suppress_instrumentation():
        async with engine.begin() as conn:
            await advisory_xact_lock(conn, _migration_lock(schema))
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{check_schema_name(schema)}"'))
            await conn.run_sync(_upgrade, cfg, revision)


def _upgrade(connection: Connection, cfg: Config, revision: str) -> None:
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


def run_alembic_env(target_metadata: MetaData, *, schema: str) -> None:
    """The body of a service's migrations/env.py.

    Programmatic runs (`upgrade_schema`) hand over their connection; the `alembic` command line
    gets a URL (`sqlalchemy.url`, else LLMCHAT_POSTGRES_DSN) and takes the same lock itself.
    """
    config = context.config
    schema = config.attributes.get("llmchat_schema", schema)
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_migrations(connection, target_metadata, schema)
        return
    url = config.get_main_option("sqlalchemy.url") or PostgresSettings().dsn
    if context.is_offline_mode():
        context.configure(
            url=async_url(url).set(drivername="postgresql"),
            target_metadata=target_metadata,
            literal_binds=True,
            version_table_schema=schema,
            include_schemas=True,
            include_name=_only_schema(schema),
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(url, target_metadata, schema))


async def _run_online(dsn: str, target_metadata: MetaData, schema: str) -> None:
    engine = create_async_engine(async_url(dsn), hide_parameters=True)
    try:
        async with engine.begin() as conn:
            await advisory_xact_lock(conn, _migration_lock(schema))
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{check_schema_name(schema)}"'))
            await conn.run_sync(_run_migrations, target_metadata, schema)
    finally:
        await engine.dispose()


def _only_schema(schema: str) -> Any:
    """Autogenerate looks at this service's schema only (others belong to other services)."""

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "schema" or name == schema

    return include_name


def _run_migrations(connection: Connection, target_metadata: MetaData, schema: str) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=True,
        include_name=_only_schema(schema),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def migration_schema(default: str) -> str:
    """The schema a migration script creates its objects in: the one `upgrade_schema` was asked
    for (a replay target, say), else the service's own."""
    return str(context.config.attributes.get("llmchat_schema", default))
