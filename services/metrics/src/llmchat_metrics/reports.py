"""Usage reports from `usage.daily`: one query grouped by (key, status), folded into buckets here
(pure, unit-tested). A day is the UTC date of the request's terminal event."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Select, func, select

from llmchat_common.usage_contracts import AdminUsageQuery, UsageBucket, UsageQuery, UsageReport
from llmchat_metrics.models import DAILY


@dataclass(frozen=True)
class StatusSum:
    """One row of the grouped query."""

    key: Any  # a date (by day) or a str (by model or user)
    status: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Acc:
    counts: dict[str, int] = field(default_factory=lambda: {"completed": 0, "failed": 0, "cancelled": 0})
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, row: StatusSum) -> None:
        self.counts[row.status] = self.counts.get(row.status, 0) + row.requests
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens

    def bucket(self, **key: Any) -> UsageBucket:
        return UsageBucket(
            **key,
            requests=sum(self.counts.values()),
            completed=self.counts["completed"],
            failed=self.counts["failed"],
            cancelled=self.counts["cancelled"],
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


_KEY_FIELD = {"day": "day", "model": "model", "user": "user_id"}


def build_report(since: date, until: date, group_by: str, rows: Iterable[StatusSum]) -> UsageReport:
    """Buckets sorted by their key, and the total over all of them."""
    groups: dict[Any, _Acc] = {}
    total = _Acc()
    for row in rows:
        groups.setdefault(row.key, _Acc()).add(row)
        total.add(row)
    name = _KEY_FIELD[group_by]
    data = [groups[k].bucket(**{name: k}) for k in sorted(groups)]
    return UsageReport(since=since, until=until, group_by=group_by, data=data, total=total.bucket())


def report_query(query: UsageQuery | AdminUsageQuery) -> Select[Any]:
    d = DAILY.c
    key = {"day": d.day, "model": d.model, "user": d.user_id}[query.group_by]
    stmt = (
        select(
            key.label("key"),
            d.status,
            func.sum(d.requests).label("requests"),
            func.sum(d.prompt_tokens).label("prompt_tokens"),
            func.sum(d.completion_tokens).label("completion_tokens"),
        )
        .where(d.day >= query.since, d.day <= query.until)
        .group_by(key, d.status)
    )
    if query.user_id is not None:
        stmt = stmt.where(d.user_id == query.user_id)
    if query.model is not None:
        stmt = stmt.where(d.model == query.model)
    return stmt


def status_sums(rows: Iterable[Any]) -> list[StatusSum]:
    return [
        StatusSum(r.key, r.status, int(r.requests), int(r.prompt_tokens), int(r.completion_tokens))
        for r in rows
    ]
