"""Traces and the /metrics endpoint, set up the same way by every service.

Tracing: an SDK tracer provider is always installed, so every request has a W3C trace id (stored
on events, rows and log lines) and context travels in NATS headers whether or not spans are
exported. Spans leave the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only
variant) is set: OTLP over HTTP/protobuf, batched. Sampling is the SDK's, from the standard
variables (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`); a
caller's sampled flag wins (parent-based).

Metrics: prometheus-client's default registry (vLLM registers its own engine metrics there too),
served by a small HTTP thread on the service's own metrics port.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer

from llmchat_common.publish import publish_retrying

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

TRACEPARENT = "traceparent"
# W3C trace context only: a caller's `baggage` header would otherwise ride on every message of
# its request (each token event included) into every service.
PROPAGATOR = TraceContextTextMapPropagator()
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def traces_endpoint() -> str | None:
    """The OTLP/HTTP traces URL spans go to, or None when tracing export is off."""
    if url := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    if url := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return url.rstrip("/") + "/v1/traces"
    return None


@dataclass
class Telemetry:
    provider: TracerProvider
    exporting: bool

    def shutdown(self) -> None:
        """Flushes the spans still buffered (bounded by the exporter's own timeout)."""
        self.provider.shutdown()


_installed: Telemetry | None = None


def setup_telemetry(service: str) -> Telemetry:
    """Installs the process's tracer provider (once; later calls return the first)."""
    global _installed
    if _installed is not None:
        return _installed
    # Libraries that build their own provider from the environment (vLLM's engine) name the
    # same service.
    os.environ.setdefault("OTEL_SERVICE_NAME", service)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    endpoint = traces_endpoint()
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = TypeOnlyErrors(OTLPSpanExporter(endpoint=endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(PROPAGATOR)  # for the instrumentations too
    _installed = Telemetry(provider, exporting=bool(endpoint))
    log.info("telemetry ready", extra={"traces_endpoint": endpoint or "off"})
    return _installed


def shutdown_telemetry() -> None:
    if _installed is not None:
        _installed.shutdown()


def flush_telemetry(timeout_ms: int = 5000) -> None:
    """Exports the spans still buffered: for a process that may die right after (uvicorn
    re-raises the signal that stopped it once its lifespan has ended)."""
    if _installed is not None:
        _installed.provider.force_flush(timeout_ms)


class TypeOnlyErrors(SpanExporter):
    """Exports spans with their errors reduced to the error's type. Instrumentations record an
    exception's message and stack (e.g. asyncpg's, whose message quotes the offending row: an
    email, a message's text); no span may carry those."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._inner.export([_type_only(span) for span in spans])

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _type_only(span: ReadableSpan) -> ReadableSpan:
    exceptions = [e for e in span.events if e.name == "exception"]
    description = span.status.description
    if not exceptions and not description:
        return span
    events = [
        Event(
            "exception", {"exception.type": str((e.attributes or {}).get("exception.type", ""))}, e.timestamp
        )
        if e.name == "exception"
        else e
        for e in span.events
    ]
    status = Status(span.status.status_code, description.split(":", 1)[0] if description else None)
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(headers: dict[str, str], ctx: Context | None = None) -> dict[str, str]:
    """Adds the current (or given) trace context to outgoing message headers."""
    PROPAGATOR.inject(headers, context=ctx)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message carries (an empty context when it carries none)."""
    return PROPAGATOR.extract(dict(headers or {}))


def trace_id_of(span: Span | None = None) -> str:
    """The W3C trace id (32 hex digits) of a span, the current one by default."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_id else ""


def traceparent_of(span: Span) -> str:
    headers: dict[str, str] = {}
    PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
    return headers.get(TRACEPARENT, "")


def record_error(span: Span, exc: BaseException) -> None:
    """Marks a span failed, by the error's type only: messages (a driver's, a validator's) may
    quote values such as an email or a prompt, which never go into a span."""
    span.add_event("exception", {"exception.type": type(exc).__qualname__})
    span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))


@contextmanager
def consumer_span(
    tracer_: trace.Tracer,
    name: str,
    headers: Mapping[str, str] | None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span for handling one message, child of the context the message carries."""
    parent = extract(headers)
    with tracer_.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes or {})
    ) as span:
        yield span


@contextmanager
def attached(ctx: Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


async def publish_traced(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    timeout_s: float,
    retry_s: float = 0.0,
    attributes: Mapping[str, str] | None = None,
) -> PubAck:
    """A JetStream publish (idempotent by `msg_id`) inside a producer span whose context travels
    in the message's headers, so the consumer's spans join the publisher's trace; tried again
    for up to `retry_s` while no stream leader answers (llmchat_common.publish)."""
    with _tracer.start_as_current_span(
        f"publish {subject}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject, **(attributes or {})},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            headers = inject({"Nats-Msg-Id": msg_id})
            return await publish_retrying(
                js, subject, payload, headers=headers, attempt_timeout_s=timeout_s, window_s=retry_s
            )
        except Exception as exc:
            record_error(span, exc)
            raise


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The classic text format whatever the scraper asks for: prometheus-client's OpenMetrics
    output turns the colons of vLLM's `vllm:*` names into underscores, so the names would differ
    between scrapers (Prometheus 2 asks for OpenMetrics)."""
    if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = generate_latest(REGISTRY)
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))])
    return [body]


def serve_metrics(host: str, port: int) -> WSGIServer | None:
    """Serves the default registry at http://host:port/metrics from a thread; 0 = off."""
    if not port:
        return None
    try:
        server = make_server(host, port, _metrics_app, ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as exc:
        # Metrics are not worth refusing to serve for (e.g. a second copy on one host).
        log.error("metrics endpoint not served", extra={"port": port, "error": repr(exc)})
        return None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics endpoint", extra={"url": f"http://{host}:{server.server_port}/metrics"})
    return server


def stop_metrics(server: WSGIServer | None) -> None:
    """Blocking (up to the server's poll interval): call it from a thread in async code."""
    if server is not None:
        server.shutdown()
        server.server_close()
