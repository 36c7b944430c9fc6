"""The OTLP/HTTP receiver the observability tests export spans to, fed by the real SDK exporter."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from llmchat_common.testing.otlp import (
    SPAN_KIND_CONSUMER,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    OtlpReceiver,
    ReceivedSpan,
)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def provider_for(
    receiver: OtlpReceiver, service: str, compression: Compression | None = None
) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.env": "test"}))
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", timeout=5, compression=compression)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def export_parent_and_child(provider: TracerProvider) -> tuple[str, str, str]:
    tracer = provider.get_tracer("llmchat.test")
    attributes: Attributes = {
        "llmchat.model": "tiny-random",
        "tokens": 12,
        "ratio": 0.5,
        "ok": True,
        "tags": ["a", "b"],
    }
    with (
        tracer.start_as_current_span(
            "POST /v1/chat/completions",
            kind=SpanKind.SERVER,
            attributes={"http.route": "/v1/chat/completions"},
        ) as parent,
        tracer.start_as_current_span(
            "worker.generate", kind=SpanKind.CONSUMER, attributes=attributes
        ) as child,
    ):
        child.set_status(Status(StatusCode.ERROR, "engine failed"))
        child.add_event("retry", {"attempt": 2})
    trace_id = format(parent.get_span_context().trace_id, "032x")
    return (
        trace_id,
        format(parent.get_span_context().span_id, "016x"),
        format(child.get_span_context().span_id, "016x"),
    )


def check_parent_and_child(spans: list[ReceivedSpan], trace_id: str, parent_id: str, child_id: str) -> None:
    by_name = {span.name: span for span in spans}
    assert set(by_name) == {"POST /v1/chat/completions", "worker.generate"}
    parent, child = by_name["POST /v1/chat/completions"], by_name["worker.generate"]
    assert parent.trace_id == child.trace_id == trace_id
    assert (parent.span_id, child.span_id) == (parent_id, child_id)
    assert parent.parent_span_id is None
    assert child.parent_span_id == parent.span_id
    assert parent.kind == SPAN_KIND_SERVER
    assert child.kind == SPAN_KIND_CONSUMER
    assert parent.attributes == {"http.route": "/v1/chat/completions"}
    assert child.attributes == {
        "llmchat.model": "tiny-random",
        "tokens": 12,
        "ratio": 0.5,
        "ok": True,
        "tags": ["a", "b"],
    }
    assert child.status_code == STATUS_ERROR
    assert child.status_message == "engine failed"
    assert child.events == [("retry", {"attempt": 2})]
    for span in (parent, child):
        assert span.service == "edge"
        assert span.resource["service.name"] == "edge"
        assert span.resource["deployment.env"] == "test"
        assert span.scope == "llmchat.test"
        assert 0 < span.start_ns <= span.end_ns
    assert parent.start_ns <= child.start_ns and child.end_ns <= parent.end_ns


def test_receives_spans_from_the_sdk_exporter(receiver: OtlpReceiver) -> None:
    assert receiver.endpoint == f"http://127.0.0.1:{receiver.port}"
    provider = provider_for(receiver, "edge")
    try:
        trace_id, parent_id, child_id = export_parent_and_child(provider)
    finally:
        provider.shutdown()
    spans = receiver.wait_for(lambda spans: len(spans) == 2, trace_id, timeout=5)
    check_parent_and_child(spans, trace_id, parent_id, child_id)
    assert receiver.spans(trace_id.upper()) == spans
    assert receiver.all_spans() == spans
    assert receiver.trace_ids() == [trace_id]
    assert receiver.count == 2  # SimpleSpanProcessor: one export per span
    assert receiver.rejected == 0


def test_gzip_compressed_export(receiver: OtlpReceiver) -> None:
    provider = provider_for(receiver, "edge", compression=Compression.Gzip)
    try:
        trace_id, parent_id, child_id = export_parent_and_child(provider)
    finally:
        provider.shutdown()
    spans = receiver.wait_for(lambda spans: len(spans) == 2, trace_id, timeout=5)
    check_parent_and_child(spans, trace_id, parent_id, child_id)


def test_links_and_separate_traces(receiver: OtlpReceiver) -> None:
    provider = provider_for(receiver, "history")
    tracer = provider.get_tracer("llmchat.test")
    try:
        with tracer.start_as_current_span("request") as first:
            pass
        with tracer.start_as_current_span("batch", links=[Link(first.get_span_context())]) as batch:
            pass
    finally:
        provider.shutdown()
    first_trace = format(first.get_span_context().trace_id, "032x")
    batch_trace = format(batch.get_span_context().trace_id, "032x")
    assert first_trace != batch_trace
    (received,) = receiver.wait_for(lambda spans: len(spans) == 1, batch_trace, timeout=5)
    assert received.kind == SPAN_KIND_INTERNAL
    assert received.links == [(first_trace, format(first.get_span_context().span_id, "016x"))]
    assert receiver.wait_for_span("request", timeout=5).trace_id == first_trace


def post(client: httpx.Client, path: str, body: bytes, content_type: str) -> int:
    return client.post(path, content=body, headers={"Content-Type": content_type}).status_code


def test_otlp_json_and_ignored_signals(receiver: OtlpReceiver) -> None:
    trace_id, span_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
    payload = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "worker"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "parentSpanId": "",
                                "name": "generate",
                                "kind": 5,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "3"}},
                                    {
                                        "key": "kv",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [
                                                    {"key": "a", "value": {"doubleValue": 1.5}},
                                                ]
                                            }
                                        },
                                    },
                                ],
                                "status": {"code": 2},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    with httpx.Client(base_url=receiver.endpoint) as client:
        response = client.post(
            "/v1/traces",
            content=gzip.compress(json.dumps(payload).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 200
        assert response.json() == {}
        protobuf = "application/x-protobuf"
        for path in ("/v1/metrics", "/v1/logs"):
            assert post(client, path, b"\x00garbage", protobuf) == 200
        assert post(client, "/v1/traces", b"x", "text/plain") == 415
        assert post(client, "/v1/traces", b"\xff\xff\xff", protobuf) == 400
        assert post(client, "/v1/other", b"", protobuf) == 404
    (span,) = receiver.spans(trace_id)
    assert (span.span_id, span.parent_span_id) == (span_id, None)
    assert (span.name, span.service, span.scope) == ("generate", "worker", "manual")
    assert span.kind == SPAN_KIND_CONSUMER and span.status_code == STATUS_ERROR
    assert span.attributes == {"n": 3, "kv": {"a": 1.5}}
    assert span.duration_s == pytest.approx(1.0)
    assert receiver.count == 6
    assert receiver.rejected == 3


def test_keeps_the_newest_traces() -> None:
    bounded = OtlpReceiver(max_traces=3).start()
    provider = provider_for(bounded, "edge")
    tracer = provider.get_tracer("llmchat.test")
    try:
        ids = []
        for n in range(5):
            with tracer.start_as_current_span(f"s{n}") as span:
                pass
            ids.append(format(span.get_span_context().trace_id, "032x"))
    finally:
        provider.shutdown()
        bounded.stop()
    assert bounded.trace_ids() == ids[2:]
    assert bounded.spans(ids[0]) == []
    assert [s.name for s in bounded.all_spans()] == ["s2", "s3", "s4"]


def test_wait_for_timeout_describes_what_arrived(receiver: OtlpReceiver) -> None:
    provider = provider_for(receiver, "auth")
    try:
        with provider.get_tracer("t").start_as_current_span(
            "rpc auth.verify", attributes={"rpc.method": "verify"}
        ):
            pass
    finally:
        provider.shutdown()
    receiver.wait_for(bool, timeout=5)
    with pytest.raises(AssertionError, match=r"(?s)within 0\.3s.*auth: 'rpc auth.verify'.*rpc.method"):
        receiver.wait_for(lambda spans: any(s.name == "never" for s in spans), timeout=0.3)
