"""The worker's traces, metrics and log context, in memory: a request message carrying a
`traceparent` goes through the consumer's handler with a scripted engine and fake JetStream
objects; spans go to an in-memory exporter (the real engine and OTLP export are covered in
tests/e2e)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.errors import NotJSMessageError
from nats.js.errors import KeyNotFoundError
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY

from llmchat_common.contracts import (
    CancelRequest,
    ChatMessage,
    ChatRequested,
    FunctionTool,
    GenerationParams,
    parse_event,
)
from llmchat_common.logging import ContextFilter
from llmchat_common.request_log import Progress
from llmchat_worker import handlers
from llmchat_worker.handlers import NatsEventSink, RequestConsumer
from llmchat_worker.publisher import EventPublisher
from llmchat_worker.service import TokenChunk
from llmchat_worker.settings import WorkerSettings
from llmchat_worker.tracing import publish_time

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PUBLISHER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PUBLISHER_SPAN}-01"


class ScriptedEngine:
    max_model_len = 64
    model_path = "scripted"

    def __init__(self, n_tokens: int = 5, delay: float = 0.0) -> None:
        self.n_tokens = n_tokens
        self.delay = delay
        self.trace_headers: list[Mapping[str, str] | None] = []
        self.aborted: list[str] = []

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        return [1] * sum(len(m.content.split()) for m in messages)

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        self.trace_headers.append(trace_headers)
        n = min(self.n_tokens, max_tokens)
        for i in range(n):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield TokenChunk(f"t{i} ", [100 + i], "length" if i == n - 1 else None)

    async def abort(self, key: str) -> None:
        self.aborted.append(key)

    def running(self) -> int:
        return 0


@dataclass
class Published:
    subject: str
    payload: bytes
    headers: dict[str, str] | None


class FakeJetStream:
    def __init__(self) -> None:
        self.published: list[Published] = []

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, timeout: float | None = None
    ) -> Any:
        """The connection's core publish and JetStream's acked one, as the publisher uses them
        (the latter's PubAck: the stream sequence)."""
        self.published.append(Published(subject, payload, headers))
        return SimpleNamespace(seq=len(self.published))


class NoCancels:
    async def get(self, key: str) -> None:
        raise KeyNotFoundError()


@dataclass
class FakeMetadata:
    num_delivered: int
    timestamp: datetime.datetime
    sequence: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(stream=1, consumer=1))


@dataclass
class FakeMsg:
    data: bytes
    headers: dict[str, str] | None
    metadata: FakeMetadata
    subject: str = "chat.v1.requests.m"
    acks: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.acks.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.acks.append("nak")

    async def term(self) -> None:
        self.acks.append("term")

    async def in_progress(self) -> None:
        pass


@dataclass
class Harness:
    consumer: RequestConsumer
    js: FakeJetStream
    engine: ScriptedEngine
    exporter: InMemorySpanExporter
    model: str

    def spans(self) -> dict[str, ReadableSpan]:
        return {s.name: s for s in self.exporter.get_finished_spans()}

    def sample(self, name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": self.model, **labels}) or 0.0


def harness(engine: ScriptedEngine | None = None) -> Harness:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # A model label of its own per test: the metrics live in the process-wide registry.
    model = f"m-{uuid.uuid4().hex[:8]}"
    engine = engine or ScriptedEngine()
    consumer = RequestConsumer(
        WorkerSettings(capacity=4, worker_id="w1", delta_max_tokens=2, delta_max_ms=10_000),
        cast(Any, engine),
        cast(Any, None),
        model,
        lambda: None,
    )
    consumer.tracer = provider.get_tracer("test")
    js = FakeJetStream()
    consumer._sink = NatsEventSink(EventPublisher(cast(Any, js), cast(Any, js), linger_s=0.0))
    consumer._cancels = cast(Any, NoCancels())
    return Harness(consumer, js, engine, exporter, model)


def request_msg(
    model: str, *, attempt: int = 1, waited: float = 0.25, traceparent: str | None = TRACEPARENT
) -> FakeMsg:
    now = time.time()
    request = ChatRequested(
        request_id=f"chatcmpl-{uuid.uuid4().hex[:12]}",
        model=model,
        messages=[ChatMessage(role="user", content="three little words")],
        params=GenerationParams(max_tokens=10, temperature=0),
        user_id="user-1",
        trace_id=TRACE_ID,
        created_at=now - waited,
        deadline=now + 30,
    )
    published = datetime.datetime.fromtimestamp(now - waited, datetime.UTC)
    return FakeMsg(
        data=request.model_dump_json().encode(),
        headers={"Nats-Msg-Id": request.request_id, **({"traceparent": traceparent} if traceparent else {})},
        metadata=FakeMetadata(attempt, published),
    )


def hex_id(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


async def test_request_spans_join_the_publishers_trace(caplog: pytest.LogCaptureFixture) -> None:
    h = harness()
    msg = request_msg(h.model, waited=0.25)
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO, logger="llmchat_worker"):
        await h.consumer._handle(cast(Any, msg))
    assert msg.acks == ["ack"]

    spans = h.spans()
    queue, generate = spans["queue wait"], spans["generate"]
    for span in (queue, generate):
        assert span.context is not None and span.parent is not None
        assert hex_id(span.context.trace_id, 32) == TRACE_ID
        assert hex_id(span.parent.span_id, 16) == PUBLISHER_SPAN
    assert queue.start_time is not None and queue.end_time is not None
    assert 0.2 <= (queue.end_time - queue.start_time) / 1e9 < 5

    attrs = dict(generate.attributes or {})
    request_id = attrs["llmchat.request_id"]
    assert attrs["llmchat.attempt"] == 1
    assert attrs["llmchat.model"] == h.model and attrs["gen_ai.request.model"] == h.model
    assert attrs["llmchat.outcome"] == "completed" and attrs["llmchat.finish_reason"] == "length"
    assert attrs["llmchat.prompt_tokens"] == 3 and attrs["llmchat.completion_tokens"] == 5
    assert attrs["llmchat.resumed_tokens"] == 0
    assert generate.status.status_code != StatusCode.ERROR

    # The engine's span and every event join the generate span.
    assert generate.context is not None
    generate_parent = f"00-{TRACE_ID}-{hex_id(generate.context.span_id, 16)}-01"
    assert h.engine.trace_headers == [{"traceparent": generate_parent}]
    types = [parse_event(p.payload).type for p in h.js.published]
    assert types[0] == "started" and types[-1] == "completed" and "delta" in types
    for published in h.js.published:
        if parse_event(published.payload).type == "delta":
            assert published.headers is None  # bare: see NatsEventSink
            continue
        assert published.headers is not None
        assert published.headers["traceparent"] == generate_parent
        assert published.headers["Nats-Msg-Id"].startswith(f"{request_id}:1:")

    # Log lines of the request carry its ids and the trace; never the prompt.
    lines = {r.getMessage(): r for r in caplog.records if getattr(r, "request_id", None) == request_id}
    assert {"request started", "request finished"} <= set(lines)
    for record in lines.values():
        assert getattr(record, "trace_id", None) == TRACE_ID
        assert getattr(record, "user_id", None) == "user-1"
    finished = lines["request finished"]
    assert getattr(finished, "outcome", None) == "completed"
    assert getattr(finished, "completion_tokens", None) == 5
    assert "three little words" not in caplog.text


async def test_request_metrics() -> None:
    h = harness()
    assert h.sample("llmchat_worker_capacity") == 4
    assert h.sample("llmchat_worker_requests_total", outcome="completed") == 0  # exists at 0
    await h.consumer._handle(cast(Any, request_msg(h.model, waited=0.25)))
    assert h.sample("llmchat_worker_requests_total", outcome="completed") == 1
    assert h.sample("llmchat_worker_generated_tokens_total") == 5
    assert h.sample("llmchat_worker_queue_wait_seconds_count") == 1
    assert 0.2 <= h.sample("llmchat_worker_queue_wait_seconds_sum") < 5
    assert h.sample("llmchat_worker_in_flight") == 0


async def test_in_flight_and_client_cancel_abort() -> None:
    h = harness(ScriptedEngine(n_tokens=1000, delay=0.002))
    msg = request_msg(h.model)
    task = asyncio.create_task(h.consumer._handle(cast(Any, msg)))
    while not h.consumer.runners:
        await asyncio.sleep(0.002)
    assert h.sample("llmchat_worker_in_flight") == 1
    request_id = next(iter(h.consumer.runners))
    while h.sample("llmchat_worker_generated_tokens_total") < 3:
        await asyncio.sleep(0.002)
    h.consumer.cancel(CancelRequest(request_id=request_id), {"traceparent": TRACEPARENT})
    await asyncio.wait_for(task, timeout=5)
    assert h.sample("llmchat_worker_in_flight") == 0
    assert h.sample("llmchat_worker_aborts_total", reason="client") == 1
    assert h.sample("llmchat_worker_requests_total", outcome="cancelled") == 1
    spans = h.spans()
    assert spans["generate"].attributes is not None
    assert spans["generate"].attributes["llmchat.outcome"] == "cancelled"
    assert spans["generate"].attributes["llmchat.cancel_reason"] == "client"
    cancel = spans["cancel"]
    assert cancel.parent is not None and hex_id(cancel.parent.span_id, 16) == PUBLISHER_SPAN


async def test_queue_wait_histogram_counts_first_deliveries_only(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness()

    async def no_events(*_: object) -> list[object]:
        return []

    monkeypatch.setattr(handlers, "nats_client", lambda broker: None)
    monkeypatch.setattr(handlers, "read_request_log", no_events)
    await h.consumer._handle(cast(Any, request_msg(h.model, attempt=2, waited=3.0)))
    assert h.sample("llmchat_worker_queue_wait_seconds_count") == 0
    assert "queue wait" in h.spans()  # the span is there for every delivery
    # Nothing stored by the earlier attempt: it goes on (from nothing), no reset.
    assert h.sample("llmchat_worker_failovers_total", kind="continued") == 1
    assert h.sample("llmchat_worker_requests_total", outcome="completed") == 1


async def test_poisoned_request_fails_in_its_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness()
    progress = Progress(attempt=3, tokens=[7, 8], text="ab", prompt_tokens=3, crashed_attempts=3)
    monkeypatch.setattr(handlers, "nats_client", lambda broker: None)

    async def stored(*_: object) -> list[object]:
        return []

    monkeypatch.setattr(handlers, "read_request_log", stored)
    monkeypatch.setattr(handlers, "progress_of", lambda events: progress)
    msg = request_msg(h.model, attempt=4)
    await h.consumer._handle(cast(Any, msg))
    assert msg.acks == ["ack"]
    assert h.sample("llmchat_worker_failovers_total", kind="poisoned") == 1
    assert h.sample("llmchat_worker_requests_total", outcome="failed") == 1
    # Its claim (`fencing`), then the outcome; both fenced by the log.
    claim, published = h.js.published
    assert [parse_event(p.payload).type for p in (claim, published)] == ["started", "failed"]
    assert claim.headers is not None and published.headers is not None
    assert claim.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
    assert claim.headers["Nats-Expected-Last-Subject-Sequence-Subject"].endswith(".*")
    assert published.headers["Nats-Expected-Last-Subject-Sequence"] == "1"  # the claim's
    assert published.headers["Nats-Expected-Last-Subject-Sequence-Subject"].endswith(".started")
    generate = h.spans()["generate"]
    assert generate.context is not None
    assert published.headers is not None
    assert published.headers["traceparent"] == f"00-{TRACE_ID}-{hex_id(generate.context.span_id, 16)}-01"
    assert generate.status.status_code == StatusCode.ERROR
    assert generate.attributes is not None and generate.attributes["llmchat.completion_tokens"] == 2


async def test_request_without_trace_context_starts_its_own() -> None:
    h = harness()
    await h.consumer._handle(cast(Any, request_msg(h.model, traceparent=None)))
    spans = h.spans()
    generate = spans["generate"]
    assert generate.parent is None and generate.context is not None
    assert spans["queue wait"].context is not None
    assert spans["queue wait"].context.trace_id == generate.context.trace_id
    framed = [p.headers for p in h.js.published if parse_event(p.payload).type != "delta"]
    assert framed and all(headers is not None and "traceparent" in headers for headers in framed)


async def test_malformed_request_is_counted_failed() -> None:
    h = harness()
    msg = request_msg(h.model)
    msg.data = b"{not json"
    await h.consumer._handle(cast(Any, msg))
    assert msg.acks == ["term"]
    assert h.sample("llmchat_worker_requests_total", outcome="failed") == 1


def test_publish_time_of_a_plain_message_is_unknown() -> None:
    class Plain:
        @property
        def metadata(self) -> Any:
            raise NotJSMessageError()

    assert publish_time(cast(Any, Plain())) is None


def test_default_metrics_port() -> None:
    assert WorkerSettings.model_fields["prometheus_port"].default == 9462
    assert WorkerSettings.model_fields["prometheus_host"].default == "127.0.0.1"
