"""Schema history: conversations and messages, with full-text search columns.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

Objects are created in `migration_schema("history")`: the same script builds a replay target.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from llmchat_common.db import migration_schema

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TITLE_TSV = "to_tsvector('simple'::regconfig, title)"
CONTENT_TSV = "to_tsvector('simple'::regconfig, content)"


def _ts(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    schema = migration_schema("history")
    op.create_table(
        "conversations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("title_source", sa.String(16), nullable=False),
        _ts("title_at"),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("deleted_at", nullable=True),
        sa.Column("title_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("title_tsv", postgresql.TSVECTOR(), sa.Computed(TITLE_TSV, persisted=True), nullable=False),
        sa.CheckConstraint(
            "title_source IN ('fallback', 'model', 'user')", name="ck_conversations_title_source"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        schema=schema,
    )
    op.create_index(
        "ix_conversations_user_id_updated_at_id",
        "conversations",
        ["user_id", "updated_at", "id"],
        schema=schema,
    )
    op.create_index(
        "ix_conversations_title_tsv", "conversations", ["title_tsv"], postgresql_using="gin", schema=schema
    )
    op.create_table(
        "messages",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("trace_id", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column(
            "content_tsv", postgresql.TSVECTOR(), sa.Computed(CONTENT_TSV, persisted=True), nullable=False
        ),
        sa.CheckConstraint("role IN ('user', 'assistant')", name="ck_messages_role"),
        sa.CheckConstraint("status IN ('completed', 'failed', 'cancelled')", name="ck_messages_status"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            [f"{schema}.conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("request_id", "role", name="pk_messages"),
        schema=schema,
    )
    op.create_index(
        "ix_messages_conversation_id_created_at",
        "messages",
        ["conversation_id", "created_at"],
        schema=schema,
    )
    op.create_index(
        "ix_messages_content_tsv", "messages", ["content_tsv"], postgresql_using="gin", schema=schema
    )


def downgrade() -> None:
    schema = migration_schema("history")
    op.drop_table("messages", schema=schema)
    op.drop_table("conversations", schema=schema)
