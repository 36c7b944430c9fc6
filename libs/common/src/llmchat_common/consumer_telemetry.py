"""What the projection consumers (history, metrics) show of themselves: one span per batch, the
consumer metrics of the catalogue (label `consumer` = the JetStream durable name) and one log
line per committed batch.

The batch span joins the requests' traces when it can: if every message of a batch carries the
same trace (a quiet log: one request's events), the batch span is a child of the first message's
context, so the projection and its database spans sit in that request's trace. Otherwise the
batch span is a root that links to the messages' contexts, and once the batch has committed
each message gets a short "<consumer> project" span in its own trace (child of the message's
context, linked to the batch span, spanning the batch's time), so every request's trace still
shows when its events were projected.

Exceptions are recorded by type only: database errors may quote the values they refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind
from prometheus_client import Counter, Gauge, Histogram

from llmchat_common.telemetry import extract, record_error, tracer

MAX_LINKS = 128

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
BATCH_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

EVENTS = Counter("llmchat_consumer_events", "Events applied and committed", ["consumer"])
BATCH_SIZE = Histogram(
    "llmchat_consumer_batch_size", "Events per committed batch", ["consumer"], buckets=BATCH_SIZE_BUCKETS
)
BATCH_SECONDS = Histogram(
    "llmchat_consumer_batch_seconds",
    "Time to apply, commit and ack a batch (retries included)",
    ["consumer"],
    buckets=BATCH_SECONDS_BUCKETS,
)
ERRORS = Counter("llmchat_consumer_errors", "Failed batch attempts (retried until they commit)", ["consumer"])
DISK_FULL = Counter(
    "llmchat_consumer_disk_full",
    "Failed batch attempts because Postgres had no disk space left (retried; nothing is acked)",
    ["consumer"],
)
SKIPPED = Counter(
    "llmchat_consumer_skipped",
    "Events the database refused for their content (logged, skipped)",
    ["consumer"],
)
RESTARTS = Counter(
    "llmchat_consumer_restarts", "Times the consumer loop failed and was restarted", ["consumer"]
)
PENDING = Gauge(
    "llmchat_consumer_pending",
    "Events not yet acknowledged: JetStream num_pending + num_ack_pending (refreshed periodically)",
    ["consumer"],
)
LAG = Gauge(
    "llmchat_consumer_lag_seconds",
    "Event time to commit, oldest event of the last batch (0 once nothing is pending)",
    ["consumer"],
)

# Module-level so tests can swap in a tracer of their own provider.
_tracer = tracer("llmchat.consumer")


def init_metrics(consumer: str) -> None:
    """Creates the consumer's series at zero, so they exist (and rate() works) before its first
    batch."""
    for metric in (EVENTS, BATCH_SIZE, BATCH_SECONDS, ERRORS, SKIPPED, RESTARTS, PENDING, LAG):
        metric.labels(consumer)


def record_batch(consumer: str, *, events: int, seconds: float, lag_s: float | None) -> None:
    EVENTS.labels(consumer).inc(events)
    BATCH_SIZE.labels(consumer).observe(events)
    BATCH_SECONDS.labels(consumer).observe(seconds)
    if lag_s is not None:
        LAG.labels(consumer).set(lag_s)


def _span_context(ctx: Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def _links(parents: Sequence[SpanContext]) -> list[Link]:
    """At most MAX_LINKS distinct contexts, in message order."""
    seen: set[tuple[int, int]] = set()
    links: list[Link] = []
    for sc in parents:
        key = (sc.trace_id, sc.span_id)
        if key in seen:
            continue
        seen.add(key)
        links.append(Link(sc))
        if len(links) == MAX_LINKS:
            break
    return links


@contextmanager
def batch_span(
    consumer: str,
    carriers: Sequence[Mapping[str, str] | None],
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """The span of one batch, current inside the block (the transaction's database spans nest
    under it); `carriers` are the messages' headers, in batch order. The per-message spans of a
    mixed batch are made only when the block ends without an error (committed)."""
    contexts = [extract(headers) for headers in carriers]
    parents = [_span_context(ctx) for ctx in contexts]
    traces = {sc.trace_id for sc in parents if sc.is_valid}
    one_trace = bool(parents) and len(traces) == 1 and all(sc.is_valid for sc in parents)
    attrs: dict[str, Any] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.batch.message_count": len(carriers),
        "messaging.consumer.group.name": consumer,
        "llmchat.consumer": consumer,
        **(attributes or {}),
    }
    start = time.time_ns()
    if one_trace:
        span = _tracer.start_span(
            f"{consumer} batch",
            context=contexts[0],
            kind=SpanKind.CONSUMER,
            attributes=attrs,
            start_time=start,
        )
    else:
        span = _tracer.start_span(
            f"{consumer} batch",
            context=Context(),  # a root, whatever is current
            kind=SpanKind.CONSUMER,
            attributes=attrs,
            links=_links([sc for sc in parents if sc.is_valid]),
            start_time=start,
        )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span
    except asyncio.CancelledError:
        span.set_attribute("llmchat.cancelled", True)
        raise
    except Exception as exc:
        record_error(span, exc)
        raise
    finally:
        end = time.time_ns()
        span.end(end_time=end)
    if one_trace:
        return
    batch = Link(span.get_span_context())
    for ctx, sc in zip(contexts, parents, strict=True):
        if sc.is_valid:
            _tracer.start_span(
                f"{consumer} project",
                context=ctx,
                kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats", "llmchat.consumer": consumer},
                links=[batch],
                start_time=start,
            ).end(end_time=end)
