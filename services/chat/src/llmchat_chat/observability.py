"""The edge's traces and Prometheus metrics (names in docs/observability.md).

HTTP server spans come from OpenTelemetry's ASGI instrumentation (pure ASGI; its per-message
`send`/`receive` spans are off, so an SSE stream is one span, not one per chunk). The server
span's context is returned to the caller in a `traceparent` response header, so a user can hand
an operator the trace of any response. Redis calls are spans too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.propagators import ResponsePropagator, set_global_response_propagator
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.propagators import textmap
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmchat_chat.errors import ApiError, RateLimited, ServiceUnavailable, Unauthorized
from llmchat_common.contracts import AnyEvent, Cancelled, Completed, Delta, Failed
from llmchat_common.telemetry import TRACEPARENT, traceparent_of

if TYPE_CHECKING:
    from llmchat_chat.service import ModelRegistry

log = logging.getLogger("llmchat.access")
PROBES = ("/healthz", "/readyz")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HTTP_REQUESTS = Counter(
    "llmchat_http_requests", "HTTP requests answered, by route template", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "llmchat_http_request_duration_seconds",
    "HTTP request time until the response ended (a stream: its whole length)",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "llmchat_ttft_seconds", "Request accepted to its first answer text", ["model"], buckets=LATENCY_BUCKETS
)
INTER_TOKEN = Histogram(
    "llmchat_inter_token_seconds",
    "Gap between successive answer texts of a request",
    ["model"],
    buckets=GAP_BUCKETS,
)
E2E = Histogram(
    "llmchat_e2e_seconds", "Request accepted to its terminal event", ["model"], buckets=LATENCY_BUCKETS
)
ACTIVE_STREAMS = Gauge("llmchat_active_streams", "Requests this edge is following right now", ["model"])
COMPLETIONS = Counter("llmchat_completions", "Followed requests by how they ended", ["model", "outcome"])
RATE_LIMITED = Counter(
    "llmchat_rate_limit_rejections", "Requests refused by a limit or the queue bound", ["limit"]
)
AUTH_FAILURES = Counter("llmchat_auth_failures", "Requests refused for their credentials", ["reason"])
MODEL_WORKERS = Gauge("llmchat_model_workers", "Live workers per served model (registry)", ["model"])


def init_metrics(models: list[str]) -> None:
    """Creates the known series at zero, so they exist (and rate() works) before the first
    request or refusal."""
    for limit in ("requests", "tokens", "concurrent", "queue", "login"):
        RATE_LIMITED.labels(limit)
    for reason in ("invalid_api_key", "token_expired", "token_revoked", "account_disabled"):
        AUTH_FAILURES.labels(reason)
    for model in models:
        ACTIVE_STREAMS.labels(model)
        for outcome in ("completed", "failed", "cancelled"):
            COMPLETIONS.labels(model, outcome)


class TraceparentResponse(ResponsePropagator):
    """Returns the server span's context as a W3C `traceparent` response header."""

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        span = trace.get_current_span(context)
        if span.get_span_context().is_valid:
            setter.set(carrier, TRACEPARENT, traceparent_of(span))


def instrument(app: Any) -> None:
    """HTTP server spans for the app (health probes and metrics excepted) and Redis spans."""
    set_global_response_propagator(TraceparentResponse())  # type: ignore[no-untyped-call]
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="/healthz,/readyz", exclude_spans=["receive", "send"]
    )
    if not RedisInstrumentor().is_instrumented_by_opentelemetry:
        RedisInstrumentor().instrument()


def count_refusal(exc: ApiError) -> None:
    if isinstance(exc, RateLimited):
        RATE_LIMITED.labels(exc.type if exc.type in ("requests", "tokens", "concurrent") else "login").inc()
    elif isinstance(exc, ServiceUnavailable) and exc.code == "model_overloaded":
        RATE_LIMITED.labels("queue").inc()
    elif isinstance(exc, Unauthorized):
        AUTH_FAILURES.labels(exc.code or "invalid").inc()


class HttpMetrics:
    """Pure ASGI: counts every response by route template and status, times it, and writes one
    access log line (ids only) inside the request's server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id = ""

        async def sending(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-request-id":
                        request_id = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            # The web app's mount at `/` has the path "" (one label for all its files).
            template = getattr(route, "path", None) or ("/" if route is not None else "unmatched")
            # Probes are neither traffic nor worth a line (they would pad every error ratio).
            if template not in PROBES:
                method = scope.get("method", "")
                elapsed = time.perf_counter() - started
                HTTP_REQUESTS.labels(template, method, str(status)).inc()
                HTTP_DURATION.labels(template, method).observe(elapsed)
                extra = {
                    "route": template,
                    "method": method,
                    "status": status,
                    "duration_s": round(elapsed, 4),
                }
                if request_id:
                    extra["request_id"] = request_id
                log.info("request", extra=extra)


class StreamTiming:
    """One followed request's latency as the edge sees it: accepted to first text (TTFT), the
    gaps between texts, accepted to the terminal event (end to end)."""

    def __init__(self, model: str, accepted_at: float) -> None:
        self.model = model
        self.accepted_at = accepted_at
        self.last_text_at: float | None = None
        self.attempt = 0
        self.done = False
        # Looked up once: `saw` runs for every event of every stream.
        self._inter_token = INTER_TOKEN.labels(model)
        ACTIVE_STREAMS.labels(model).inc()

    def saw(self, event: AnyEvent) -> None:
        # A superseded attempt's late events (a worker presumed dead) are not this request's.
        if self.done or event.attempt < self.attempt:
            return
        self.attempt = event.attempt
        now = time.time()
        if isinstance(event, Delta) and event.text:
            if self.last_text_at is None:
                TTFT.labels(self.model).observe(max(0.0, now - self.accepted_at))
            else:
                self._inter_token.observe(now - self.last_text_at)
            self.last_text_at = now
        elif isinstance(event, Completed | Failed | Cancelled):
            E2E.labels(self.model).observe(max(0.0, now - self.accepted_at))
            COMPLETIONS.labels(self.model, event.type).inc()
            self.end()

    def end(self) -> None:
        if not self.done:
            self.done = True
            ACTIVE_STREAMS.labels(self.model).dec()


async def watch_workers(registry: ModelRegistry, interval_s: float = 5.0) -> None:
    """Keeps `llmchat_model_workers` current for every model served or ever seen live (0 when
    none is live, so "no live worker" alerts fire for models outside the catalog too)."""
    seen = set(registry.catalog)
    while True:
        live = await registry.live()
        seen |= set(live)
        for model in seen:
            MODEL_WORKERS.labels(model).set(len(live.get(model, [])))
        await asyncio.sleep(interval_s)
