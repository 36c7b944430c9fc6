"""Schema history: the queue of requests to erase from the event log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

Deleting a conversation or erasing a user queues its requests here, in the transaction that
deletes its rows; the eraser forgets each from the event log once it has ended.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from llmchat_common.db import migration_schema

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tries", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_erasures")),
        schema=migration_schema("history"),
    )


def downgrade() -> None:
    op.drop_table("erasures", schema=migration_schema("history"))
