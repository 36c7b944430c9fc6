"""Tables of schema `history` (owned by this service; nobody else reads them).

Every row is derived from the event log (CHAT_EVENTS) except what users do to their
conversations (renames, deletes), which lives only here: `replay` copies that state into its
target before it replays the log. A deleted conversation stays as a tombstone (its id, owner and
`deleted_at`, title blanked, no messages) so that events still in flight for it are dropped
instead of bringing it back.

Ids are strings as the edge generates them (uuid4 text for conversations; request ids); user
ids are auth's uuids as text, so no row depends on another service's schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "history"

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The 'simple' configuration: no stemming or stop words, so any language's words are found as
# typed (a chat platform cannot know its users' language).
TITLE_TSV = "to_tsvector('simple'::regconfig, title)"
CONTENT_TSV = "to_tsvector('simple'::regconfig, content)"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA, naming_convention=NAMING)


def _ts(*, nullable: bool = False) -> Any:
    return mapped_column(DateTime(timezone=True), nullable=nullable)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        CheckConstraint("title_source IN ('fallback', 'model', 'user')", name="title_source"),
        # Listing: a user's conversations newest first, keyset-paginated on (updated_at, id).
        Index(None, "user_id", "updated_at", "id"),
        Index("ix_conversations_title_tsv", "title_tsv", postgresql_using="gin"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    # Precedence user > model > fallback; within a source the later `title_at` wins.
    title_source: Mapped[str] = mapped_column(String(16))
    title_at: Mapped[datetime] = _ts()
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The model of the latest request (by event time).
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The first request's created_at; the latest event's time.
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts()
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)
    # Set in the transaction that completed the opening exchange (the first user message and
    # an answer with text): one title request per conversation, ever.
    title_requested: Mapped[bool] = mapped_column(Boolean, server_default=false())
    title_tsv: Mapped[Any] = mapped_column(TSVECTOR, Computed(TITLE_TSV, persisted=True))


class Message(Base):
    """One per (request, role, position): a request's user message or tool results (the tool
    answers the client sent in that turn, in its order) and the assistant's answer."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'tool')", name="role"),
        CheckConstraint("status IN ('completed', 'failed', 'cancelled')", name="status"),
        Index(None, "conversation_id", "created_at"),
        Index("ix_messages_content_tsv", "content_tsv", postgresql_using="gin"),
    )

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    # 0 for the user message and the answer; a tool result's index among the request's.
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(Text, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Failed: the error code; cancelled: the reason.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A tool result: the call it answers.
    tool_call_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # An answer that calls tools: OpenAI's `tool_calls` ([{id, type, function: {name,
    # arguments}}]); null when it calls none.
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB, nullable=True)
    trace_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The request's created_at, for every role: a conversation reads in request order.
    created_at: Mapped[datetime] = _ts()
    # The log position of the earliest event that carried this message.
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    content_tsv: Mapped[Any] = mapped_column(TSVECTOR, Computed(CONTENT_TSV, persisted=True))


class Erasure(Base):
    """A request to erase from the event log (`llmchat_common.forgetting`), queued in the
    transaction that deletes its rows (a deleted conversation's or response's, an erased
    user's) and worked off by the eraser (`erasing.py`) once the request has ended. A done one
    stays as a tombstone (`done_at`) for the log's retention: an event of it that the
    projection had already fetched is then not stored again. Only ids: nothing of what was
    said."""

    __tablename__ = "erasures"

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    requested_at: Mapped[datetime] = _ts()
    tries: Mapped[int] = mapped_column(Integer, server_default="0")
    done_at: Mapped[datetime | None] = _ts(nullable=True)


class StoredResponse(Base):
    """A stored Responses API response (`store`), kept past the event log's retention: its
    terminal event as the log has it (the newest attempt's), from which the edge renders the
    Response object exactly as it does from the log. Its turn is also in `messages`."""

    __tablename__ = "responses"
    __table_args__ = (Index(None, "conversation_id"), Index(None, "user_id"))

    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    conversation_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer)
    terminal: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _ts()
    stream_seq: Mapped[int] = mapped_column(BigInteger)


# Core views of the tables (the projection and replay write with Core statements).
conversations: Table = Conversation.__table__  # type: ignore[assignment]
messages: Table = Message.__table__  # type: ignore[assignment]
erasures: Table = Erasure.__table__  # type: ignore[assignment]
responses: Table = StoredResponse.__table__  # type: ignore[assignment]


class Batch(Base):
    """One batch (`/v1/batches`), owned by the batch coordinator (batches.py). Its counts are
    its lines', counted when asked. `ending` is the status a batch that is `finalizing` ends
    with once its running lines have stopped (`expired`)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(128))
    lines_object: Mapped[str] = mapped_column(String(256))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    ending: Mapped[str | None] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONB)
    validation_errors: Mapped[list[dict[str, object]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


Index("ix_batches_user_id_created_at_id", Batch.user_id, Batch.created_at.desc(), Batch.id.desc())


class BatchLine(Base):
    """One line of a batch: its request as the edge prepared it, where it stands and the
    newest attempt's terminal event (`attempt` fences an older attempt's late one). Body,
    request and terminal event are JSON bytes, not JSONB: JSONB refuses `\\u0000`, which a
    model's text may hold."""

    __tablename__ = "batch_lines"

    request_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(128))
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    request: Mapped[bytes | None] = mapped_column(LargeBinary)
    terminal: Mapped[bytes | None] = mapped_column(LargeBinary)
    error: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    attempt: Mapped[int] = mapped_column(Integer)
    cancel_sent: Mapped[bool] = mapped_column(Boolean)
    tokens: Mapped[int] = mapped_column(Integer)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


Index("ix_batch_lines_batch_id_line", BatchLine.batch_id, BatchLine.line, unique=True)
# The coordinator's pacing reads the lines published in the last minute.
Index("ix_batch_lines_published_at", BatchLine.published_at)
Index(
    "ix_batch_lines_open",
    BatchLine.status,
    postgresql_where=BatchLine.status.in_(["pending", "running"]),
)

BATCHES: Table = Batch.__table__  # type: ignore[assignment]
BATCH_LINES: Table = BatchLine.__table__  # type: ignore[assignment]
