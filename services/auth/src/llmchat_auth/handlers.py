"""The request-reply subscribers: one per operation on `auth.v1.rpc.<op>`, in queue group
`auth` so replicas share the load. Every request gets an `AuthReply`, whatever happens."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from llmchat_auth.errors import AuthFailure
from llmchat_auth.service import AuthService
from llmchat_common import subjects
from llmchat_common.auth_contracts import (
    AuthReply,
    ChangePasswordRequest,
    CreateApiKeyRequest,
    ListUsersRequest,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
    RevokeApiKeyRequest,
    SetUserDisabledRequest,
    UserRef,
    VerifyApiKeyRequest,
)

log = logging.getLogger(__name__)


class KvRevocations:
    """The service's `Revocations` port on a JetStream KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def put(self, key: str, value: bytes) -> None:
        await self._kv.put(key, value)

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)


class _Empty(BaseModel):
    """Operations without arguments accept any JSON object (edges send `{}`)."""


@dataclass(frozen=True)
class Operation:
    request: type[BaseModel]
    call: Callable[[Any], Awaitable[BaseModel]]


def operations(service: AuthService) -> dict[str, Operation]:
    def no_args(method: Callable[[], Awaitable[BaseModel]]) -> Callable[[Any], Awaitable[BaseModel]]:
        return lambda _: method()

    return {
        "ping": Operation(_Empty, no_args(service.ping)),
        "register": Operation(RegisterRequest, service.register),
        "login": Operation(LoginRequest, service.login),
        "refresh": Operation(RefreshRequest, service.refresh),
        "logout": Operation(LogoutRequest, service.logout),
        "me": Operation(UserRef, service.me),
        "change_password": Operation(ChangePasswordRequest, service.change_password),
        "create_api_key": Operation(CreateApiKeyRequest, service.create_api_key),
        "list_api_keys": Operation(UserRef, service.list_api_keys),
        "revoke_api_key": Operation(RevokeApiKeyRequest, service.revoke_api_key),
        "verify_api_key": Operation(VerifyApiKeyRequest, service.verify_api_key),
        "list_users": Operation(ListUsersRequest, service.list_users),
        "set_user_disabled": Operation(SetUserDisabledRequest, service.set_user_disabled),
        "jwks": Operation(_Empty, no_args(service.jwks)),
    }


def describe_validation_error(exc: ValidationError) -> str:
    """Field and reason only: the input (a password, a token) is never echoed back."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


async def handle(op: str, operation: Operation, body: bytes) -> AuthReply:
    started = time.perf_counter()
    try:
        request = operation.request.model_validate_json(body or b"{}")
    except ValidationError as exc:
        return AuthReply.failure("invalid_request", describe_validation_error(exc))
    try:
        reply = AuthReply.success(await operation.call(request))
        outcome = "ok"
    except AuthFailure as exc:
        reply = AuthReply.failure(exc.code, exc.message)
        outcome = exc.code
    except Exception as exc:  # noqa: BLE001 - answered, never left hanging
        # The type and where it was raised, not the message: driver errors may quote values.
        log.error("operation failed", extra={"op": op, "error": type(exc).__name__, "at": _origin(exc)})
        reply = AuthReply.failure("unavailable", "the authentication service is unavailable; try again")
        outcome = "unavailable"
    ms = round(1000 * (time.perf_counter() - started), 1)
    log.debug("handled", extra={"op": op, "outcome": outcome, "ms": ms})
    return reply


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def register_handlers(broker: NatsBroker, service: AuthService, *, max_workers: int) -> None:
    for op, operation in operations(service).items():
        _subscribe(broker, op, operation, max_workers)


def _subscribe(broker: NatsBroker, op: str, operation: Operation, max_workers: int) -> None:
    # The raw message, not a typed body: malformed JSON must still get an `invalid_request`
    # reply, which FastStream's own validation would not send.
    async def on_request(message: NatsMessage) -> AuthReply:
        return await handle(op, operation, message.body)

    on_request.__name__ = f"auth_{op}"
    broker.subscriber(subjects.auth_subject(op), queue=subjects.AUTH_QUEUE, max_workers=max_workers)(
        on_request
    )
