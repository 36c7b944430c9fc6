"""The usage operations, without messaging: queries in, reports out."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, text, union
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common.usage_contracts import (
    AdminUsageQuery,
    JobListQuery,
    JobPage,
    JobQuery,
    JobRecord,
    UsageQuery,
    UsageReport,
    UserRequests,
    UserRequestsQuery,
)
from llmchat_metrics.job_queries import get_job, list_jobs
from llmchat_metrics.models import Job, UsageRequest
from llmchat_metrics.reports import build_report, report_query, status_sums


class Pong(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool = True


class UsageService:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def ping(self) -> Pong:
        """Answers only while the database does: a ping is the service's readiness."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return Pong()

    async def usage(self, query: UsageQuery) -> UsageReport:
        return await self._report(query)

    async def admin_usage(self, query: AdminUsageQuery) -> UsageReport:
        return await self._report(query)

    async def _report(self, query: UsageQuery | AdminUsageQuery) -> UsageReport:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(report_query(query))).all()
        return build_report(query.since, query.until, query.group_by, status_sums(rows))

    async def job_get(self, query: JobQuery) -> JobRecord:
        async with self.engine.connect() as conn:
            return await get_job(conn, query)

    async def job_list(self, query: JobListQuery) -> JobPage:
        async with self.engine.connect() as conn:
            return await list_jobs(conn, query)

    async def user_requests(self, query: UserRequestsQuery) -> UserRequests:
        stmt = union(
            select(UsageRequest.request_id).where(UsageRequest.user_id == query.user_id),
            select(Job.request_id).where(Job.user_id == query.user_id),
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(stmt)
        return UserRequests(request_ids=sorted(row[0] for row in rows))
