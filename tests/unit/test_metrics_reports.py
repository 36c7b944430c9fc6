"""Usage report grouping, query building, time arguments and export writers, without a database."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime

import pytest
from llmchat_metrics.export import Writer
from llmchat_metrics.reports import StatusSum, build_report, report_query
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql.base import PGDialect

from llmchat_common.lifecycle import parse_time
from llmchat_common.usage_contracts import AdminUsageQuery, UsageQuery

D1, D2 = date(2026, 12, 1), date(2026, 12, 2)


def test_report_by_day_folds_statuses_into_sorted_buckets_and_a_total() -> None:
    rows = [
        StatusSum(D2, "completed", 1, 10, 20),
        StatusSum(D1, "completed", 2, 5, 6),
        StatusSum(D1, "cancelled", 1, 3, 1),
        StatusSum(D1, "failed", 1, 4, 0),
    ]
    report = build_report(D1, D2, "day", rows)
    assert [b.day for b in report.data] == [D1, D2]
    first = report.data[0]
    assert (first.requests, first.completed, first.failed, first.cancelled) == (4, 2, 1, 1)
    assert (first.prompt_tokens, first.completion_tokens, first.total_tokens) == (12, 7, 19)
    assert first.model is None and first.user_id is None
    t = report.total
    assert (t.requests, t.prompt_tokens, t.completion_tokens, t.total_tokens) == (5, 22, 27, 49)
    assert t.day is None


def test_report_by_model_and_user_set_their_key() -> None:
    rows = [StatusSum("b", "completed", 1, 1, 1), StatusSum("a", "failed", 1, 2, 0)]
    assert [b.model for b in build_report(D1, D1, "model", rows).data] == ["a", "b"]
    assert [b.user_id for b in build_report(D1, D1, "user", rows).data] == ["a", "b"]


def test_empty_report_has_a_zero_total() -> None:
    report = build_report(D1, D1, "day", [])
    assert report.data == [] and report.total.requests == 0


def _sql(query: UsageQuery | AdminUsageQuery) -> str:
    return str(report_query(query).compile(dialect=PGDialect()))  # type: ignore[no-untyped-call]


def test_user_query_is_scoped_to_the_user_and_the_model() -> None:
    sql = _sql(UsageQuery(user_id="u", since=D1, until=D2, group_by="model", model="m"))
    assert "usage.daily.user_id =" in sql and "usage.daily.model =" in sql
    assert "GROUP BY usage.daily.model, usage.daily.status" in sql
    admin = _sql(AdminUsageQuery(since=D1, until=D2, group_by="user"))
    assert "usage.daily.user_id =" not in admin and "GROUP BY usage.daily.user_id" in admin


def test_bad_ranges_and_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        UsageQuery(user_id="u", since=D2, until=D1)
    with pytest.raises(ValidationError):
        UsageQuery.model_validate({"user_id": "u", "since": "2026-12-01", "until": "2026-12-01", "x": 1})


def test_parse_time_dates_and_times() -> None:
    assert parse_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("2026-12-01", end_of_day=True) == datetime(2026, 12, 2, tzinfo=UTC)
    assert parse_time("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert parse_time("2026-12-01T10:00:00+02:00") == datetime(2026, 12, 1, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="yesterday"):
        parse_time("yesterday")


def test_writers() -> None:
    row = {"a": 1, "when": datetime(2026, 12, 1, tzinfo=UTC), "event": {"x": [1, 2]}}
    out = io.StringIO()
    Writer(out, "jsonl", ["a", "when", "event"]).write(row)
    assert json.loads(out.getvalue()) == {"a": 1, "when": "2026-12-01T00:00:00+00:00", "event": {"x": [1, 2]}}
    out = io.StringIO()
    Writer(out, "csv", ["a", "when", "event"]).write(row)
    assert out.getvalue().splitlines() == ["a,when,event", '1,2026-12-01T00:00:00+00:00,"{""x"":[1,2]}"']
