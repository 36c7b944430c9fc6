"""Schema usage: one row per request, and daily aggregates.

Objects are created in `migration_schema("usage")`, so the same script builds a replay target.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from llmchat_common.db import migration_schema

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_STATUS_CHECK = "status IN ('completed', 'failed', 'cancelled')"


def upgrade() -> None:
    schema = migration_schema("usage")
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("api_key_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("conversation_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("finish_reason", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("queue_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("tpot_ms", sa.Float(), nullable=True),
        sa.Column("e2e_ms", sa.Float(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("projected_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(_STATUS_CHECK, name="ck_requests_status"),
        sa.PrimaryKeyConstraint("request_id", name="pk_requests"),
        schema=schema,
    )
    op.create_index("ix_requests_user_id_day", "requests", ["user_id", "day"], schema=schema)
    op.create_index("ix_requests_day", "requests", ["day"], schema=schema)
    op.create_table(
        "daily",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(_STATUS_CHECK, name="ck_daily_status"),
        sa.PrimaryKeyConstraint("user_id", "model", "day", "status", name="pk_daily"),
        schema=schema,
    )
    op.create_index("ix_daily_day", "daily", ["day"], schema=schema)


def downgrade() -> None:
    schema = migration_schema("usage")
    op.drop_index("ix_daily_day", table_name="daily", schema=schema)
    op.drop_table("daily", schema=schema)
    op.drop_index("ix_requests_day", table_name="requests", schema=schema)
    op.drop_index("ix_requests_user_id_day", table_name="requests", schema=schema)
    op.drop_table("requests", schema=schema)
