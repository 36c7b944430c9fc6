"""Request-reply telemetry through FastStream's in-memory broker: each request is a server span,
child of the caller's `traceparent`, and is counted and timed per service and method."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faststream.nats import NatsBroker, TestNatsBroker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from pydantic import BaseModel

from llmchat_common import rpc
from llmchat_common.rpc import NotFound, Operation, RpcClient, RpcReply, serve_operations


class Ask(BaseModel):
    user_id: str
    what: str


class Answer(BaseModel):
    said: str


async def answer(req: Ask) -> Answer:
    if req.what == "missing":
        raise NotFound()
    if req.what == "crash":
        raise RuntimeError("driver said: value 'secret@example.com' refused")
    return Answer(said=req.what)


SERVICE = f"svc{uuid.uuid4().hex[:6]}"


def subject(op: str) -> str:
    return f"test.{SERVICE}.{op}"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(rpc, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


@pytest.fixture
async def broker() -> AsyncIterator[NatsBroker]:
    broker = NatsBroker()
    serve_operations(
        broker,
        {"ask": Operation(Ask, answer)},
        service=SERVICE,
        subject=subject,
        queue=SERVICE,
        max_workers=2,
        unavailable="unavailable",
    )
    async with TestNatsBroker(broker) as test_broker:
        yield test_broker


def count(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "llmchat_rpc_requests_total", {"service": SERVICE, "method": "ask", "outcome": outcome}
    )
    assert value is not None  # the series exist from the start
    return value


async def call(broker: NatsBroker, body: bytes, headers: dict[str, str] | None = None) -> RpcReply:
    response = await broker.request(body, subject("ask"), headers=headers, timeout=5)
    return RpcReply.model_validate_json(response.body)


async def test_a_request_is_a_server_span_in_the_callers_trace(
    broker: NatsBroker, exporter: InMemorySpanExporter
) -> None:
    ok_before = count("ok")
    parent = {"traceparent": f"00-{0xF1:032x}-{0x51:016x}-01"}
    reply = await call(broker, b'{"user_id": "u1", "what": "hi"}', parent)
    assert reply.ok and reply.result == {"said": "hi"}
    (span,) = exporter.get_finished_spans()
    assert span.name == f"{SERVICE} ask" and span.kind == SpanKind.SERVER
    assert span.context.trace_id == 0xF1
    assert span.parent is not None and span.parent.span_id == 0x51
    assert dict(span.attributes or {})["rpc.method"] == "ask"
    assert count("ok") == ok_before + 1
    duration = REGISTRY.get_sample_value(
        "llmchat_rpc_duration_seconds_count", {"service": SERVICE, "method": "ask"}
    )
    assert duration is not None and duration >= 1


async def test_error_replies_count_as_errors_and_failures_mark_the_span(
    broker: NatsBroker, exporter: InMemorySpanExporter
) -> None:
    errors_before = count("error")
    assert (await call(broker, b'{"user_id": "u1", "what": "missing"}')).error is not None
    assert (await call(broker, b"{not json")).error is not None
    crashed = await call(broker, b'{"user_id": "u1", "what": "crash"}')
    assert crashed.error is not None and crashed.error.code == "unavailable"
    assert count("error") == errors_before + 3

    missing, invalid, crash = exporter.get_finished_spans()
    assert missing.parent is None  # no caller context: a root
    assert dict(missing.attributes or {})["llmchat.rpc.error_code"] == "not_found"
    assert missing.status.status_code != StatusCode.ERROR  # the caller's mistake, not a fault
    assert dict(invalid.attributes or {})["llmchat.rpc.error_code"] == "invalid_request"
    assert crash.status.status_code == StatusCode.ERROR
    assert [dict(e.attributes or {}) for e in crash.events] == [{"exception.type": "RuntimeError"}]
    assert "example.com" not in crash.to_json()


class RecordingNats:
    def __init__(self) -> None:
        self.headers: dict[str, str] | None = None

    async def request(
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> SimpleNamespace:
        self.headers = headers
        return SimpleNamespace(data=RpcReply.success(Answer(said="x")).model_dump_json().encode())


async def test_the_caller_sends_its_context_in_a_client_span(exporter: InMemorySpanExporter) -> None:
    nc = RecordingNats()
    client = RpcClient(cast(Any, nc), subject, timeout_s=1, service="history")
    tracer = rpc._tracer
    with tracer.start_as_current_span("edge request") as outer:
        assert await client.call("ask", Ask(user_id="u", what="x"), Answer) == Answer(said="x")
    client_span = next(s for s in exporter.get_finished_spans() if s.name == "history ask")
    assert client_span.kind == SpanKind.CLIENT
    assert client_span.parent is not None and client_span.parent.span_id == outer.get_span_context().span_id
    assert nc.headers is not None and set(nc.headers) == {"traceparent"}
    ids = f"00-{client_span.context.trace_id:032x}-{client_span.context.span_id:016x}-"
    assert nc.headers["traceparent"].startswith(ids)
