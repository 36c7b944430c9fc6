"""The projection consumers' batch spans, metrics and log line, with an SDK tracer of the test's
own (no global provider) and fake messages: a one-trace batch is a child of that trace, a mixed
batch is a root with links plus one span per message in its own trace."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmchat_common import consumer_telemetry
from llmchat_common.consumer_telemetry import MAX_LINKS, batch_span
from llmchat_common.contracts import Completed, Timings, Usage
from llmchat_common.logging import ContextFilter
from llmchat_common.projection import EVENTS_SOURCE, LogConsumer, ProjectionSettings, StoredEvent

TS = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(consumer_telemetry, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def traceparent(trace_id: int, span_id: int) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_a_batch_of_one_trace_is_a_child_of_its_first_message(exporter: InMemorySpanExporter) -> None:
    carriers = [traceparent(0xA1, 0x11), traceparent(0xA1, 0x12), traceparent(0xA1, 0x13)]
    with batch_span("projection-x", carriers):
        inner = consumer_telemetry._tracer.start_span("INSERT")  # a query span, say
        inner.end()
    spans = exporter.get_finished_spans()
    (batch,) = named(spans, "projection-x batch")
    assert batch.kind == SpanKind.CONSUMER
    assert batch.context.trace_id == 0xA1
    assert batch.parent is not None and batch.parent.span_id == 0x11
    assert not batch.links
    attrs = dict(batch.attributes or {})
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.batch.message_count"] == 3
    assert attrs["llmchat.consumer"] == "projection-x"
    (query,) = named(spans, "INSERT")
    assert query.parent is not None and query.parent.span_id == batch.context.span_id
    assert not named(spans, "projection-x project")


def test_a_mixed_batch_is_a_root_with_links_and_a_span_per_message(exporter: InMemorySpanExporter) -> None:
    carriers: list[dict[str, str] | None] = [traceparent(0xB1, 0x21), None, traceparent(0xB2, 0x22)]
    with batch_span("projection-x", carriers):
        pass
    spans = exporter.get_finished_spans()
    (batch,) = named(spans, "projection-x batch")
    assert batch.parent is None
    assert batch.context.trace_id not in (0xB1, 0xB2)
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (0xB1, 0x21),
        (0xB2, 0x22),
    ]
    per_message = named(spans, "projection-x project")
    assert sorted((s.context.trace_id, s.parent.span_id if s.parent else 0) for s in per_message) == [
        (0xB1, 0x21),
        (0xB2, 0x22),
    ]
    for span in per_message:
        assert span.kind == SpanKind.CONSUMER
        assert [link.context.span_id for link in span.links] == [batch.context.span_id]
        assert (span.start_time, span.end_time) == (batch.start_time, batch.end_time)


def test_messages_without_context_give_a_root_batch_without_links(exporter: InMemorySpanExporter) -> None:
    with batch_span("projection-x", [None, {}]):
        pass
    (batch,) = exporter.get_finished_spans()
    assert batch.parent is None and not batch.links


def test_links_are_capped(exporter: InMemorySpanExporter) -> None:
    carriers = [traceparent(0x1000 + i, 0x1) for i in range(MAX_LINKS + 50)]
    with batch_span("projection-x", carriers):
        pass
    spans = exporter.get_finished_spans()
    (batch,) = named(spans, "projection-x batch")
    assert len(batch.links) == MAX_LINKS
    assert len(named(spans, "projection-x project")) == MAX_LINKS + 50


def test_a_failed_batch_records_the_error_type_only_and_no_message_spans(
    exporter: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(ValueError, match="duplicate key"),
        batch_span("projection-x", [traceparent(0xC1, 0x1), None]),
    ):
        raise ValueError("duplicate key value (email)=(someone@example.com)")
    (batch,) = exporter.get_finished_spans()
    assert batch.status.status_code == StatusCode.ERROR
    (event,) = batch.events
    assert dict(event.attributes or {}) == {"exception.type": "ValueError"}
    assert "example.com" not in repr(batch.to_json())


# -- the consume loop's batch step ---------------------------------------------------------------
class RecordingProjection:
    event_types: tuple[str, ...] = ("completed",)

    def __init__(self, name: str) -> None:
        self.name = name
        self.applied: list[StoredEvent] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[StoredEvent]) -> None:
        consumer_telemetry._tracer.start_span("query").end()
        self.applied.extend(events)


class FakeEngine:
    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Any]:
        yield SimpleNamespace()


def completed(request_id: str) -> bytes:
    return (
        Completed(
            request_id=request_id,
            attempt=1,
            seq=1,
            worker_id="w",
            ts=TS,
            finish_reason="stop",
            text="private answer text",
            usage=Usage(prompt_tokens=1, completion_tokens=1),
            timings=Timings(),
        )
        .model_dump_json()
        .encode()
    )


def message(seq: int, headers: dict[str, str] | None, acks: list[int]) -> Any:
    async def ack() -> None:
        acks.append(seq)

    metadata = SimpleNamespace(
        sequence=SimpleNamespace(stream=seq), timestamp=datetime.fromtimestamp(TS + 1, UTC)
    )
    return SimpleNamespace(data=completed(f"r{seq}"), headers=headers, metadata=metadata, ack=ack)


def consumer_of(projection: RecordingProjection) -> LogConsumer[StoredEvent]:
    return LogConsumer(
        cast(Any, None),
        cast(AsyncEngine, FakeEngine()),
        projection,
        ProjectionSettings(),
        source=EVENTS_SOURCE,
    )


def sample(name: str, consumer: str) -> float:
    return REGISTRY.get_sample_value(name, {"consumer": consumer}) or 0.0


async def test_a_batch_is_applied_acked_counted_and_logged_in_its_trace(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    projection = RecordingProjection(f"t{uuid.uuid4().hex[:8]}")
    consumer = consumer_of(projection)
    acks: list[int] = []
    msgs = [message(1, traceparent(0xD1, 0x31), acks), message(2, traceparent(0xD1, 0x32), acks)]
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.INFO, logger="llmchat_common.projection"):
        await consumer._handle(msgs)

    assert [e.request_id for e in projection.applied] == ["r1", "r2"] and acks == [1, 2]
    spans = exporter.get_finished_spans()
    (batch,) = named(spans, f"{consumer.durable} batch")
    assert batch.context.trace_id == 0xD1
    (query,) = named(spans, "query")
    assert query.parent is not None and query.parent.span_id == batch.context.span_id

    (line,) = [r for r in caplog.records if r.getMessage() == "batch committed"]
    assert line.__dict__["consumer"] == consumer.durable and line.__dict__["events"] == 2
    assert line.__dict__["trace_id"] == f"{0xD1:032x}"
    assert line.__dict__["seconds"] >= 0

    assert sample("llmchat_consumer_events_total", consumer.durable) == 2
    assert sample("llmchat_consumer_batch_size_count", consumer.durable) == 1
    assert sample("llmchat_consumer_batch_size_sum", consumer.durable) == 2
    assert sample("llmchat_consumer_batch_seconds_count", consumer.durable) == 1
    assert sample("llmchat_consumer_lag_seconds", consumer.durable) > 0


async def test_a_database_error_is_counted_and_retried_until_the_commit(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    projection = RecordingProjection(f"t{uuid.uuid4().hex[:8]}")
    consumer = consumer_of(projection)
    real_apply = projection.apply
    failures = [ConnectionError("postgres away")]

    async def flaky(conn: AsyncConnection, events: Sequence[StoredEvent]) -> None:
        if failures:
            raise failures.pop()
        await real_apply(conn, events)

    monkeypatch.setattr(projection, "apply", flaky)

    async def no_sleep(_s: float) -> None:
        return None

    monkeypatch.setattr("llmchat_common.projection.asyncio.sleep", no_sleep)
    acks: list[int] = []
    msg = message(1, traceparent(0xE1, 0x41), acks)
    msg.in_progress = lambda: no_sleep(0)
    await consumer._handle([msg])

    assert acks == [1] and len(projection.applied) == 1
    assert sample("llmchat_consumer_errors_total", consumer.durable) == 1
    assert sample("llmchat_consumer_events_total", consumer.durable) == 1
    (batch,) = named(exporter.get_finished_spans(), f"{consumer.durable} batch")
    assert batch.status.status_code == StatusCode.ERROR
    assert [dict(e.attributes or {}) for e in batch.events] == [{"exception.type": "ConnectionError"}]
