"""Schema history: stored Responses API responses; done erasures kept as tombstones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

A stored response's terminal event (the newest attempt's), so that it can be retrieved and
continued (`previous_response_id`) after the event log has let it go. An erasure that is done
keeps its row (`done_at`) for the log's retention, so that an event of the request the
projection had already fetched is not stored again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from llmchat_common.db import migration_schema

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    schema = migration_schema("history")
    op.create_table(
        "responses",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("terminal", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_responses")),
        schema=schema,
    )
    op.create_index(op.f("ix_responses_conversation_id"), "responses", ["conversation_id"], schema=schema)
    op.create_index(op.f("ix_responses_user_id"), "responses", ["user_id"], schema=schema)
    op.add_column("erasures", sa.Column("done_at", sa.DateTime(timezone=True), nullable=True), schema=schema)


def downgrade() -> None:
    schema = migration_schema("history")
    op.drop_column("erasures", "done_at", schema=schema)
    op.drop_table("responses", schema=schema)
