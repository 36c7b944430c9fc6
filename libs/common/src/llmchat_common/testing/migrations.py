"""Do a service's migrations build exactly what its models declare? (one check per service)"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from llmchat_common.db import create_engine
from llmchat_common.settings import PostgresSettings


async def migration_diff(dsn: str, metadata: MetaData, schema: str) -> list[Any]:
    """Alembic's autogenerate diff between the migrated `schema` and `metadata` (empty: equal)."""

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, _: type_ != "schema" or name == schema,
                "compare_type": True,
                "version_table_schema": schema,
            },
        )
        return list(compare_metadata(context, metadata))

    engine = create_engine(PostgresSettings(dsn=dsn))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(diff)
    finally:
        await engine.dispose()
