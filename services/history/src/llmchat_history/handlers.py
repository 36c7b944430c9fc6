"""The request-reply operations on `history.v1.rpc.<op>`, in queue group `history` so replicas
share the load. Every request gets an `RpcReply`, whatever happens (llmchat_common.rpc)."""

from __future__ import annotations

from faststream.nats import NatsBroker

from llmchat_common import subjects
from llmchat_common.batch_contracts import BatchCreate, BatchLinesQuery, BatchListQuery, BatchRef
from llmchat_common.history_contracts import (
    ConversationRef,
    EraseUser,
    ExportConversation,
    ListConversations,
    RenameConversation,
    RequestRef,
)
from llmchat_common.rpc import Operation, no_args, serve_operations
from llmchat_history.batches import BatchCoordinator
from llmchat_history.service import HistoryService


def operations(service: HistoryService, batches: BatchCoordinator) -> dict[str, Operation]:
    ops = {
        "ping": no_args(service.ping),
        "list": Operation(ListConversations, service.list),
        "get": Operation(ConversationRef, service.get),
        "check": Operation(ConversationRef, service.check),
        "rename": Operation(RenameConversation, service.rename),
        "delete": Operation(ConversationRef, service.delete),
        "export": Operation(ExportConversation, service.export),
        "erase_user": Operation(EraseUser, service.erase_user),
        "forget_request": Operation(RequestRef, service.forget_request),
        "response_get": Operation(RequestRef, service.response_get),
        "batch_create": Operation(BatchCreate, batches.create),
        "batch_get": Operation(BatchRef, batches.get),
        "batch_list": Operation(BatchListQuery, batches.list),
        "batch_cancel": Operation(BatchRef, batches.cancel),
        "batch_lines": Operation(BatchLinesQuery, batches.lines),
    }
    if tuple(ops) != subjects.HISTORY_OPS:  # the edge calls exactly these
        raise RuntimeError("history operations differ from subjects.HISTORY_OPS")
    return ops


def register_handlers(
    broker: NatsBroker, service: HistoryService, batches: BatchCoordinator, *, max_workers: int
) -> None:
    serve_operations(
        broker,
        operations(service, batches),
        service="history",
        subject=subjects.history_subject,
        queue=subjects.HISTORY_QUEUE,
        max_workers=max_workers,
        unavailable="the history service is unavailable; try again",
    )
