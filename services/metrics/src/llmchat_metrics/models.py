"""Tables of schema `usage` (owned by this service; others ask over NATS).

`jobs` holds one row per chat request from the moment it is queued (the jobs API's listing).

`requests` holds one row per request, keyed by its id: the insert of a redelivered,
re-published or replayed terminal event conflicts and changes nothing. `daily` is the
aggregate the reports read; it is incremented only from the rows an insert actually added, in
the same transaction, so it can never count a request twice (see projection.py).

A missing user or model (events from before accounts existed) is stored as '' in both tables:
the aggregate's primary key cannot hold NULL, and one spelling keeps them comparable.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "usage"
STATUSES = ("completed", "failed", "cancelled")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
_STATUS_CHECK = "status IN ('completed', 'failed', 'cancelled')"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA, naming_convention=NAMING)


class UsageRequest(Base):
    """One request's usage, from its terminal event."""

    __tablename__ = "requests"
    __table_args__ = (
        CheckConstraint(_STATUS_CHECK, name="status"),
        Index(None, "user_id", "day"),
        Index(None, "day"),
    )

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    # completed: the finish reason; failed: the error code; cancelled: the cancel reason.
    finish_reason: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    queue_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    tpot_ms: Mapped[float | None] = mapped_column(Float)
    e2e_ms: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str] = mapped_column(String(128))
    # The terminal event's attempt (1 unless the request was redelivered after a worker died).
    attempts: Mapped[int] = mapped_column(Integer)
    trace_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The UTC date of finished_at: what a report's day means.
    day: Mapped[date] = mapped_column(Date)
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    projected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UsageDaily(Base):
    """Sums of `requests` per user, model, day and status."""

    __tablename__ = "daily"
    __table_args__ = (
        CheckConstraint(_STATUS_CHECK, name="status"),
        Index(None, "day"),
    )

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)


JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
_JOB_STATUS_CHECK = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')"


class Job(Base):
    """One chat request (title requests are not jobs) and where it stands: merged from its
    `requested` message (CHAT_REQUESTS) and its `started` and terminal events (CHAT_EVENTS),
    in whatever order they arrive (see jobs.py). A missing user or model is '' as above."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_JOB_STATUS_CHECK, name="status"),)

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    trace_id: Mapped[str | None] = mapped_column(String(64))


# The listing: one user's jobs newest first, keyset-paginated on (created_at, request_id).
Index("ix_jobs_user_id_created_at_request_id", Job.user_id, Job.created_at.desc(), Job.request_id.desc())


# Core handles for the projection's statements (typed as tables, not generic FromClauses).
REQUESTS: Table = UsageRequest.__table__  # type: ignore[assignment]
DAILY: Table = UsageDaily.__table__  # type: ignore[assignment]
JOBS: Table = Job.__table__  # type: ignore[assignment]
