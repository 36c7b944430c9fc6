"""The request-reply operations on `history.v1.rpc.<op>`, in queue group `history` so replicas
share the load. Every request gets an `RpcReply`, whatever happens (llmchat_common.rpc)."""

from __future__ import annotations

from faststream.nats import NatsBroker

from llmchat_common import subjects
from llmchat_common.history_contracts import (
    ConversationRef,
    EraseUser,
    ExportConversation,
    ListConversations,
    RenameConversation,
    RequestRef,
)
from llmchat_common.rpc import Operation, no_args, serve_operations
from llmchat_history.service import HistoryService


def operations(service: HistoryService) -> dict[str, Operation]:
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
    }
    if tuple(ops) != subjects.HISTORY_OPS:  # the edge calls exactly these
        raise RuntimeError("history operations differ from subjects.HISTORY_OPS")
    return ops


def register_handlers(broker: NatsBroker, service: HistoryService, *, max_workers: int) -> None:
    serve_operations(
        broker,
        operations(service),
        service="history",
        subject=subjects.history_subject,
        queue=subjects.HISTORY_QUEUE,
        max_workers=max_workers,
        unavailable="the history service is unavailable; try again",
    )
