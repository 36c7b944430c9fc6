"""Request-reply bodies between the edge and the metrics service (`usage.v1.rpc.<op>`).

A day is the UTC date of the request's terminal event. `usage` answers for one user (the edge
puts the caller's id in); `admin_usage` across users (the edge allows it to admins only).
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmchat_common.history_contracts import DbText

GroupBy = Literal["day", "model"]
AdminGroupBy = Literal["day", "model", "user"]
MAX_RANGE_DAYS = 366


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Range(_Body):
    # Inclusive, UTC days.
    since: date
    until: date
    model: DbText | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.until < self.since:
            raise ValueError("until is before since")
        if (self.until - self.since).days >= MAX_RANGE_DAYS:
            raise ValueError(f"a range is at most {MAX_RANGE_DAYS} days")
        return self


class UsageQuery(_Range):
    user_id: str
    group_by: GroupBy = "day"


class AdminUsageQuery(_Range):
    group_by: AdminGroupBy = "day"
    user_id: DbText | None = Field(default=None, max_length=100)


class UsageBucket(_Out):
    # The group's key: the one `group_by` names is set.
    day: date | None = None
    model: str | None = None
    user_id: str | None = None
    requests: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class UsageReport(_Out):
    since: date
    until: date
    group_by: str
    data: list[UsageBucket]
    total: UsageBucket


# -- jobs (`job_get`, `job_list`): every chat request of a user, from the log --------------------
# `status_of` in services/chat/.../job_format.py is the same mapping: no event yet → queued,
# `started` → running, then the terminal event (a deadline cancel is a failed job).
JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "completed", "failed", "cancelled")
MAX_JOB_PAGE = 100


class JobQuery(_Body):
    user_id: str = Field(min_length=1)
    request_id: str = Field(min_length=1, max_length=128)


class JobListQuery(_Body):
    """Newest first. `cursor` is the `next_cursor` of the previous page, opaque to callers;
    `status` keeps only jobs in those statuses (None: all)."""

    user_id: str = Field(min_length=1)
    status: list[JobStatus] | None = Field(default=None, min_length=1, max_length=len(JOB_STATUSES))
    limit: int = Field(default=20, ge=1, le=MAX_JOB_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class JobRecord(_Out):
    """One job as the metrics service projects it. Times are Unix epoch seconds. Terminal
    fields (finish, tokens, error) are set once the terminal event is in: `finish_reason` is
    the model's for a completed job and the cancel reason (`client`, `deadline`, `shutdown`)
    for a cancelled one, or one failed at its deadline; `error_code`/`error_message` are those
    of `job_format.error_of` (`deadline_exceeded`, `cancelled`, or the failure's own)."""

    request_id: str
    user_id: str
    api_key_id: str | None = None
    model: str
    conversation_id: str | None = None
    source: str = "chat"
    status: JobStatus
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    # The highest attempt seen (0 while queued; >1 after a redelivery).
    attempts: int = 0
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    trace_id: str | None = None


class JobPage(_Out):
    data: list[JobRecord]
    # None on the last page.
    next_cursor: str | None = None


class UserRequestsQuery(_Body):
    """Every request the user made that the metrics service knows of (usage rows and jobs,
    queued ones included): what erasing the user must forget."""

    user_id: str = Field(min_length=1, max_length=128)


class UserRequests(_Out):
    request_ids: list[str]
