"""Schema history: batches and their lines (the batch coordinator's state).

Objects are created in `migration_schema("history")`, so the same script builds a replay target.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from llmchat_common.db import migration_schema

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    schema = migration_schema("history")
    at = [
        sa.Column(name, sa.DateTime(timezone=True), nullable=True)
        for name in (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        )
    ]
    op.create_table(
        "batches",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(128), nullable=False),
        sa.Column("lines_object", sa.String(256), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("tokens_per_minute", sa.Integer(), nullable=True),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ending", sa.String(16), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("metadata", JSONB(), nullable=True),
        sa.Column("validation_errors", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        *at,
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        schema=schema,
    )
    op.create_index(
        "ix_batches_user_id_created_at_id",
        "batches",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=schema,
    )
    op.create_table(
        "batch_lines",
        sa.Column("request_id", sa.String(160), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("request", sa.LargeBinary(), nullable=True),
        sa.Column("terminal", sa.LargeBinary(), nullable=True),
        sa.Column("error", JSONB(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("cancel_sent", sa.Boolean(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_batch_lines"),
        schema=schema,
    )
    op.create_index(
        "ix_batch_lines_batch_id_line", "batch_lines", ["batch_id", "line"], unique=True, schema=schema
    )
    op.create_index("ix_batch_lines_published_at", "batch_lines", ["published_at"], schema=schema)
    op.create_index(
        "ix_batch_lines_open",
        "batch_lines",
        ["status"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema("history")
    op.drop_table("batch_lines", schema=schema)
    op.drop_table("batches", schema=schema)
