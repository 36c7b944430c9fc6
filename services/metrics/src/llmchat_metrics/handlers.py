"""The request-reply operations on `usage.v1.rpc.<op>`, in queue group `metrics` so replicas
share the load. Every request gets an `RpcReply`, whatever happens (llmchat_common.rpc)."""

from __future__ import annotations

from faststream.nats import NatsBroker

from llmchat_common import subjects
from llmchat_common.rpc import Operation, no_args, serve_operations
from llmchat_common.usage_contracts import (
    AdminUsageQuery,
    JobListQuery,
    JobQuery,
    UsageQuery,
    UserRequestsQuery,
)
from llmchat_metrics.service import UsageService


def operations(service: UsageService) -> dict[str, Operation]:
    return {
        "ping": no_args(service.ping),
        "usage": Operation(UsageQuery, service.usage),
        "admin_usage": Operation(AdminUsageQuery, service.admin_usage),
        "job_get": Operation(JobQuery, service.job_get),
        "job_list": Operation(JobListQuery, service.job_list),
        "user_requests": Operation(UserRequestsQuery, service.user_requests),
    }


def register_handlers(broker: NatsBroker, service: UsageService, *, max_workers: int) -> None:
    ops = operations(service)
    # The contract lists the operations once; a mismatch is a bug caught at start.
    if tuple(ops) != subjects.USAGE_OPS:
        raise RuntimeError("the operations differ from subjects.USAGE_OPS")
    serve_operations(
        broker,
        ops,
        service="metrics",
        subject=subjects.usage_subject,
        queue=subjects.USAGE_QUEUE,
        max_workers=max_workers,
        unavailable="the usage service is unavailable; try again",
    )
