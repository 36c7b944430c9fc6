"""Calls from the edge to the services that own data (auth, history, metrics), over NATS
request-reply; their error replies become the edge's API errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nats.aio.client import Client
from pydantic import BaseModel

from llmchat_chat.errors import ServiceUnavailable, from_service
from llmchat_common import subjects
from llmchat_common.rpc import RpcClient, RpcFailed, RpcUnavailable

R = TypeVar("R", bound=BaseModel)


class ServiceClient:
    """One service's operations (`subject(op)`), answering with the edge's errors."""

    def __init__(self, nc: Client, subject: Callable[[str], str], *, timeout_s: float, service: str) -> None:
        self._rpc = RpcClient(nc, subject, timeout_s=timeout_s, service=service)

    async def call(self, op: str, request: BaseModel | None, result_type: type[R]) -> R:
        try:
            return await self._rpc.call(op, request, result_type)
        except RpcUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        except RpcFailed as exc:
            raise from_service(exc.code, exc.message, exc.status) from exc


def history_client(nc: Client, timeout_s: float) -> ServiceClient:
    return ServiceClient(nc, subjects.history_subject, timeout_s=timeout_s, service="history")


def usage_client(nc: Client, timeout_s: float) -> ServiceClient:
    return ServiceClient(nc, subjects.usage_subject, timeout_s=timeout_s, service="usage")
