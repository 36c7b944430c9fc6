"""Alembic environment of schema `usage` (see llmchat_common.db.run_alembic_env)."""

from llmchat_metrics.models import SCHEMA, Base

from llmchat_common.db import run_alembic_env

run_alembic_env(Base.metadata, schema=SCHEMA)
