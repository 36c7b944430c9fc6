"""Usage (the metrics service's projection): the caller's own, and across users for admins.
JSON by default, CSV with `format=csv` (a download)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import ValidationError

from llmchat_chat.api.deps import AdminDep, CallerDep, UsageDep
from llmchat_chat.errors import InvalidRequest
from llmchat_common.usage_contracts import (
    AdminGroupBy,
    AdminUsageQuery,
    GroupBy,
    UsageBucket,
    UsageQuery,
    UsageReport,
)

router = APIRouter(tags=["usage"])

DEFAULT_DAYS = 30
Format = Literal["json", "csv"]
CSV_COLUMNS = [name for name in UsageBucket.model_fields]


def date_range(since: date | None, until: date | None) -> tuple[date, date]:
    """Defaults: the last 30 UTC days, today included."""
    until = until or datetime.now(UTC).date()
    return since or until - timedelta(days=DEFAULT_DAYS - 1), until


def as_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for bucket in report.data:
        writer.writerow(bucket.model_dump(mode="json"))
    return out.getvalue()


def render(report: UsageReport, fmt: Format, name: str) -> UsageReport | Response:
    if fmt == "json":
        return report
    filename = f"{name}-{report.since}-{report.until}-by-{report.group_by}.csv"
    return Response(
        as_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def invalid(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False, include_input=False)[0]
    return InvalidRequest(
        f"invalid usage query: {error['msg']}", param=".".join(map(str, error["loc"])) or None
    )


# Both forms in the API description: the report as JSON, or the same table as a CSV download.
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the usage report"}
}


@router.get("/v1/usage", response_model=UsageReport, responses=REPORT_RESPONSES)
async def own_usage(
    caller: CallerDep,
    usage: UsageDep,
    since: date | None = None,
    until: date | None = None,
    group_by: GroupBy = "day",
    model: Annotated[str | None, Query(max_length=200)] = None,
    format: Format = "json",
) -> UsageReport | Response:
    """Tokens and requests per UTC day (of the request's end) or per model; inclusive range."""
    start, end = date_range(since, until)
    query = UsageQuery(user_id=caller.user_id, since=start, until=end, group_by=group_by, model=model)
    return render(await usage.call("usage", query, UsageReport), format, "usage")


@router.get("/v1/admin/usage", response_model=UsageReport, responses=REPORT_RESPONSES)
async def platform_usage(
    _: AdminDep,
    usage: UsageDep,
    since: date | None = None,
    until: date | None = None,
    group_by: AdminGroupBy = "day",
    user_id: Annotated[str | None, Query(max_length=100)] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    format: Format = "json",
) -> UsageReport | Response:
    start, end = date_range(since, until)
    query = AdminUsageQuery(since=start, until=end, group_by=group_by, user_id=user_id, model=model)
    return render(await usage.call("admin_usage", query, UsageReport), format, "platform-usage")
