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
