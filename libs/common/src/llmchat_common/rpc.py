"""Request-reply between the edge and the services that own data (auth, history, metrics).

One envelope for every reply: `ok` with a `result`, or an `error` with a stable `code` the edge
maps to HTTP once (`ERROR_STATUS`). The serving side answers every request, whatever happens:
a malformed body gets `invalid_request`, an unexpected failure `unavailable`, never silence.

Traces: the calling side sends its trace context in the request's headers; the serving side
handles each request inside a server span ("<service> <op>", e.g. "history get") that is its
child, so a service's log lines and database spans join the caller's trace. Each request is
counted in llmchat_rpc_requests_total{service,method,outcome} (outcome `error`: any error reply)
and timed in llmchat_rpc_duration_seconds{service,method}.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import nats.errors
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, ValidationError

from llmchat_common.logging import log_context
from llmchat_common.telemetry import extract, inject, record_error, tracer

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)

# While no replica of a service is subscribed (each reconnecting to another NATS node after one
# was lost, or all restarting), a request gets "no responders" at once: nobody received it, so
# it is sent again after this pause, until the call's own timeout. A timeout is not retried: the
# request may have been handled.
NO_RESPONDERS_PAUSE_S = 0.25
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RPC_REQUESTS = Counter(
    "llmchat_rpc_requests",
    "Requests answered, by outcome (error: an error reply)",
    ["service", "method", "outcome"],
)
RPC_DURATION = Histogram(
    "llmchat_rpc_duration_seconds", "Time to answer a request", ["service", "method"], buckets=RPC_BUCKETS
)
# Module-level so tests can swap in a tracer of their own provider.
_tracer = tracer("llmchat.rpc")

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
        # The caller's id on the service's log lines (an id, never a credential).
        with log_context(user_id=_user_id(request)):
            reply = RpcReply.success(await operation.call(request))
        outcome = "ok"
    except ServiceFailure as exc:
        reply = RpcReply.failure(exc.code, exc.message)
        outcome = exc.code
    except Exception as exc:  # noqa: BLE001 - answered, never left hanging
        # The type and where it was raised, not the message: driver errors may quote values.
        log.error("operation failed", extra={"op": op, "error": type(exc).__name__, "at": _origin(exc)})
        record_error(trace.get_current_span(), exc)
        reply = RpcReply.failure("unavailable", unavailable)
        outcome = "unavailable"
    ms = round(1000 * (time.perf_counter() - started), 1)
    log.debug("handled", extra={"op": op, "outcome": outcome, "ms": ms})
    return reply


def _user_id(request: BaseModel) -> str | None:
    value = getattr(request, "user_id", None)
    return str(value) if value else None


async def serve_one(
    service: str,
    op: str,
    operation: Operation,
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    unavailable: str,
) -> RpcReply:
    """`handle` inside the request's server span (child of the caller's context), counted and
    timed."""
    started = time.perf_counter()
    carrier = {k: v for k, v in (headers or {}).items() if isinstance(v, str)}
    with _tracer.start_as_current_span(
        f"{service} {op}",
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "nats", "rpc.service": service, "rpc.method": op},
        record_exception=False,
    ) as span:
        reply = await handle(op, operation, body, unavailable=unavailable)
        _describe(span, reply)
    outcome = "ok" if reply.ok else "error"
    RPC_REQUESTS.labels(service, op, outcome).inc()
    RPC_DURATION.labels(service, op).observe(time.perf_counter() - started)
    return reply


def _describe(span: Span, reply: RpcReply) -> None:
    span.set_attribute("llmchat.rpc.outcome", "ok" if reply.ok else "error")
    if reply.error is not None:
        span.set_attribute("llmchat.rpc.error_code", reply.error.code)


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


def serve_operations(
    broker: NatsBroker,
    operations: Mapping[str, Operation],
    *,
    service: str,
    subject: Callable[[str], str],
    queue: str,
    max_workers: int,
    unavailable: str,
) -> None:
    """One subscriber per operation, in a queue group so replicas share the requests. `service`
    names the spans and labels the metrics (the Prometheus job: auth, history, metrics)."""
    for op, operation in operations.items():
        # Every series exists from the start, at zero.
        RPC_REQUESTS.labels(service, op, "ok")
        RPC_REQUESTS.labels(service, op, "error")
        RPC_DURATION.labels(service, op)
        _subscribe(broker, service, op, operation, subject(op), queue, max_workers, unavailable)


def _subscribe(
    broker: NatsBroker,
    service: str,
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
        return await serve_one(service, op, operation, message.body, message.headers, unavailable=unavailable)

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
        subject = self._subject(op)
        with _tracer.start_as_current_span(
            f"{self._service} {op}",
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "nats", "rpc.service": self._service, "rpc.method": op},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            deadline = time.monotonic() + (timeout_s or self._timeout_s)
            try:
                while True:
                    try:
                        msg = await self._nc.request(
                            subject, payload, timeout=deadline - time.monotonic(), headers=inject({})
                        )
                        break
                    except nats.errors.NoRespondersError:
                        if time.monotonic() + NO_RESPONDERS_PAUSE_S >= deadline:
                            raise
                        await asyncio.sleep(NO_RESPONDERS_PAUSE_S)
                reply = RpcReply.model_validate_json(msg.data)
            except Exception as exc:
                record_error(trace.get_current_span(), exc)
                log.warning(
                    "rpc failed", extra={"target": self._service, "op": op, "error": type(exc).__name__}
                )
                raise RpcUnavailable(f"the {self._service} service is unavailable; try again") from exc
            _describe(span, reply)
        if reply.error is not None:
            raise RpcFailed(reply.error.code, reply.error.message)
        return result_type.model_validate(reply.result or {})
