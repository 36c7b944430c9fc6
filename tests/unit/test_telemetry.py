"""The shared telemetry pieces: exported spans keep an error's type only; context travels as
W3C trace context only (no baggage); the metrics endpoint speaks the classic text format."""

from __future__ import annotations

import socket

import httpx
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import Gauge

from llmchat_common.telemetry import TypeOnlyErrors, inject, serve_metrics, stop_metrics


def test_exported_spans_keep_only_the_errors_type() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TypeOnlyErrors(memory)))
    tracer = provider.get_tracer("test")
    secret = "Key (email)=(alice@example.com) already exists"
    with pytest.raises(ValueError, match="already exists"), tracer.start_as_current_span("query"):
        raise ValueError(secret)
    with tracer.start_as_current_span("fine") as span:
        span.add_event("note", {"k": "v"})
    failed, fine = memory.get_finished_spans()
    assert failed.status.description == "ValueError"
    assert [dict(e.attributes or {}) for e in failed.events] == [{"exception.type": "ValueError"}]
    assert secret not in repr([failed.events, failed.status, failed.attributes])
    assert [e.name for e in fine.events] == ["note"] and fine.status.description is None


def test_only_trace_context_travels() -> None:
    provider = TracerProvider()
    ctx = baggage.set_baggage("big", "x" * 100)
    token = context.attach(ctx)
    try:
        with provider.get_tracer("test").start_as_current_span("publish"):
            headers = inject({"Nats-Msg-Id": "r1"})
            span_id = trace.get_current_span().get_span_context().span_id
    finally:
        context.detach(token)
    assert set(headers) == {"Nats-Msg-Id", "traceparent"}
    assert headers["traceparent"].split("-")[2] == format(span_id, "016x")


def test_metrics_endpoint_keeps_colons_whatever_the_scraper_asks() -> None:
    Gauge("llmchat_test:colon_metric", "a name with a colon, like vLLM's").set(2)
    assert serve_metrics("127.0.0.1", 0) is None  # 0: off
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_metrics("127.0.0.1", port)
    try:
        openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=openmetrics)
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "llmchat_test:colon_metric 2.0" in resp.text
        assert httpx.get(f"http://127.0.0.1:{port}/other").status_code == 404
        # A second server on the same port: logged, no exception (the service keeps running).
        assert serve_metrics("127.0.0.1", port) is None
    finally:
        stop_metrics(server)
