"""Schema history: tool calling — tool results as messages, an answer's tool calls.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-16

A request may carry several tool results, so a message is keyed by (request_id, role,
position): the rows already stored (one user message and one answer per request) take position
0 and keep their keys. Objects are changed in `migration_schema("history")`: the same script
builds a replay target.

Downgrade drops the tool results (the old key cannot hold them) and the answers' tool calls.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from llmchat_common.db import migration_schema

# 0001's check constraints went through the naming convention twice (`ck_<table>_` + a name
# that already had it): the role check is named so in every database; the names are given as
# they are (`op.f`) so that the convention is not applied to them once more.
ROLE_CHECK = "ck_messages_ck_messages_role"

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    schema = migration_schema("history")
    # A constant default fills the existing rows without rewriting the table; it is dropped
    # right after, so that every writer names the position.
    op.add_column(
        "messages",
        sa.Column("position", sa.Integer(), server_default=sa.text("0"), nullable=False),
        schema=schema,
    )
    op.alter_column("messages", "position", server_default=None, schema=schema)
    op.add_column("messages", sa.Column("tool_call_id", sa.Text(), nullable=True), schema=schema)
    op.add_column("messages", sa.Column("tool_calls", postgresql.JSONB(), nullable=True), schema=schema)
    op.drop_constraint(op.f("pk_messages"), "messages", type_="primary", schema=schema)
    op.create_primary_key(op.f("pk_messages"), "messages", ["request_id", "role", "position"], schema=schema)
    op.drop_constraint(op.f(ROLE_CHECK), "messages", type_="check", schema=schema)
    op.create_check_constraint(
        op.f(ROLE_CHECK), "messages", "role IN ('user', 'assistant', 'tool')", schema=schema
    )


def downgrade() -> None:
    schema = migration_schema("history")
    messages = sa.table("messages", sa.column("role"), schema=schema)
    op.execute(messages.delete().where(messages.c.role == "tool"))
    op.drop_constraint(op.f(ROLE_CHECK), "messages", type_="check", schema=schema)
    op.create_check_constraint(op.f(ROLE_CHECK), "messages", "role IN ('user', 'assistant')", schema=schema)
    op.drop_constraint(op.f("pk_messages"), "messages", type_="primary", schema=schema)
    op.create_primary_key(op.f("pk_messages"), "messages", ["request_id", "role"], schema=schema)
    op.drop_column("messages", "tool_calls", schema=schema)
    op.drop_column("messages", "tool_call_id", schema=schema)
    op.drop_column("messages", "position", schema=schema)
