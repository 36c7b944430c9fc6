"""Schema usage: the jobs table (one row per chat request, from queued to its end).

Objects are created in `migration_schema("usage")`, so the same script builds a replay target.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from llmchat_common.db import migration_schema

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_STATUS_CHECK = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')"


def upgrade() -> None:
    schema = migration_schema("usage")
    op.create_table(
        "jobs",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("api_key_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("conversation_id", sa.String(128), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finish_reason", sa.String(64), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.CheckConstraint(_STATUS_CHECK, name="ck_jobs_status"),
        sa.PrimaryKeyConstraint("request_id", name="pk_jobs"),
        schema=schema,
    )
    op.create_index(
        "ix_jobs_user_id_created_at_request_id",
        "jobs",
        ["user_id", sa.text("created_at DESC"), sa.text("request_id DESC")],
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema("usage")
    op.drop_index("ix_jobs_user_id_created_at_request_id", table_name="jobs", schema=schema)
    op.drop_table("jobs", schema=schema)
