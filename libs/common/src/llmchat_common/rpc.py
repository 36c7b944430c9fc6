"""Request-reply between the edge and the services that own data (auth, history, metrics).

One envelope for every reply: `ok` with a `result`, or an `error` with a stable `code` the edge
maps to HTTP once (`ERROR_STATUS`). The serving side answers every request, whatever happens:
a malformed body gets `invalid_request`, an unexpected failure `unavailable`, never silence.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)

# Error codes a service may answer, and the HTTP status the edge gives each.
ERROR_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "weak_password": 400,
    "invalid_credentials": 401,
    "invalid_token": 401,
    "account_disabled": 403,
    "registration_closed": 403,
    "forbidden": 403,
    "not_found": 404,
    "email_taken": 409,
    "conflict": 409,
    "unavailable": 503,
}
ErrorCode = Literal[
    "invalid_request",
    "weak_password",
    "invalid_credentials",
    "invalid_token",
    "account_disabled",
    "registration_closed",
    "forbidden",
    "not_found",
    "email_taken",
    "conflict",
    "unavailable",
]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RpcError(_Msg):
    code: str
    message: str


class RpcReply(_Msg):
    ok: bool
    result: dict[str, Any] | None = None
    error: RpcError | None = None

    @classmethod
    def success(cls, result: BaseModel) -> RpcReply:
        return cls(ok=True, result=result.model_dump(mode="json"))

    @classmethod
    def failure(cls, code: ErrorCode, message: str) -> RpcReply:
        return cls(ok=False, error=RpcError(code=code, message=message))


class Empty(_Msg):
    """Operations without arguments accept any JSON object (callers send `{}`)."""


class ServiceFailure(Exception):
    """Raised by a service's logic for a failure its caller may see (one subclass per failure,
    each with its stable code); becomes an error reply."""

    code: ClassVar[ErrorCode] = "unavailable"
    default_message: ClassVar[str] = "the service is unavailable"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class NotFound(ServiceFailure):
    """A missing object and another user's object alike: the caller cannot tell them apart."""

    code = "not_found"
    default_message = "not found"


class InvalidRequest(ServiceFailure):
    code = "invalid_request"
    default_message = "invalid request"


@dataclass(frozen=True)
class Operation:
    request: type[BaseModel]
    call: Callable[[Any], Awaitable[BaseModel]]


def no_args(method: Callable[[], Awaitable[BaseModel]]) -> Operation:
    return Operation(Empty, lambda _: method())


def describe_validation_error(exc: ValidationError) -> str:
    """Field and reason only: the input (a password, a token, a prompt) is never echoed back."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


async def handle(op: str, operation: Operation, body: bytes, *, unavailable: str) -> RpcReply:
    started = time.perf_counter()
    try:
        request = operation.request.model_validate_json(body or b"{}")
    except ValidationError as exc:
        return RpcReply.failure("invalid_request", describe_validation_error(exc))
    try:
        reply = RpcReply.success(await operation.call(request))
        outcome = "ok"
    except ServiceFailure as exc:
        reply = RpcReply.failure(exc.code, exc.message)
        outcome = exc.code
    except Exception as exc:  # noqa: BLE001 - answered, never left hanging
        # The type and where it was raised, not the message: driver errors may quote values.
        log.error("operation failed", extra={"op": op, "error": type(exc).__name__, "at": _origin(exc)})
        reply = RpcReply.failure("unavailable", unavailable)
        outcome = "unavailable"
    ms = round(1000 * (time.perf_counter() - started), 1)
    log.debug("handled", extra={"op": op, "outcome": outcome, "ms": ms})
    return reply


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def serve_operations(
    broker: NatsBroker,
    operations: Mapping[str, Operation],
    *,
    subject: Callable[[str], str],
    queue: str,
    max_workers: int,
    unavailable: str,
) -> None:
    """One subscriber per operation, in a queue group so replicas share the requests."""
    for op, operation in operations.items():
        _subscribe(broker, op, operation, subject(op), queue, max_workers, unavailable)


def _subscribe(
    broker: NatsBroker,
    op: str,
    operation: Operation,
    subject: str,
    queue: str,
    max_workers: int,
    unavailable: str,
) -> None:
    # The raw message, not a typed body: malformed JSON must still get an `invalid_request`
    # reply, which FastStream's own validation would not send.
    async def on_request(message: NatsMessage) -> RpcReply:
        return await handle(op, operation, message.body, unavailable=unavailable)

    on_request.__name__ = f"{queue}_{op}"
    broker.subscriber(subject, queue=queue, max_workers=max_workers)(on_request)


class RpcUnavailable(Exception):
    """No answer (timeout, no responders, a garbled reply)."""


class RpcFailed(Exception):
    """The service answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return ERROR_STATUS.get(self.code, 503)


class RpcClient:
    """The calling side: one request, one `RpcReply`, the result parsed as `result_type`."""

    def __init__(self, nc: Client, subject: Callable[[str], str], *, timeout_s: float, service: str) -> None:
        self._nc = nc
        self._subject = subject
        self._timeout_s = timeout_s
        self._service = service

    async def call(
        self, op: str, request: BaseModel | None, result_type: type[R], *, timeout_s: float | None = None
    ) -> R:
        payload = request.model_dump_json().encode() if request is not None else b"{}"
        try:
            msg = await self._nc.request(self._subject(op), payload, timeout=timeout_s or self._timeout_s)
            reply = RpcReply.model_validate_json(msg.data)
        except Exception as exc:
            log.warning("rpc failed", extra={"service": self._service, "op": op, "error": type(exc).__name__})
            raise RpcUnavailable(f"the {self._service} service is unavailable; try again") from exc
        if reply.error is not None:
            raise RpcFailed(reply.error.code, reply.error.message)
        return result_type.model_validate(reply.result or {})
