"""The worker's spans and span attributes: the wait in the stream, the `generate` span's
attributes, and how an attempt ended (ids and counts only, never text)."""

from __future__ import annotations

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from llmchat_common import subjects
from llmchat_common.contracts import Cancelled, ChatRequested, Completed, Released
from llmchat_worker import metrics
from llmchat_worker.service import Terminal


def publish_time(msg: Msg) -> float | None:
    """When JetStream stored the message (epoch seconds; the same for every delivery)."""
    try:
        return msg.metadata.timestamp.timestamp()
    except Exception:  # noqa: BLE001 - not a JetStream message (tests, tools)
        return None


def trace_queue_wait(
    tracer_: trace.Tracer,
    parent: Context,
    request: ChatRequested,
    *,
    model: str,
    attempt: int,
    published: float | None,
    pulled: float,
) -> float | None:
    """The time the request waited in the stream, as a span from its publish to its pull
    (child of the publisher's context) and, for first deliveries, in the queue-wait
    histogram (a redelivery's wait includes the earlier attempts). Returns seconds."""
    if published is None:
        return None
    wait = max(0.0, pulled - published)
    if attempt == 1:
        metrics.QUEUE_WAIT.labels(model).observe(wait)
    span = tracer_.start_span(
        "queue wait",
        context=parent,
        kind=SpanKind.INTERNAL,
        start_time=int(published * 1e9),
        attributes={
            "llmchat.request_id": request.request_id,
            "llmchat.attempt": attempt,
            "llmchat.model": model,
            "messaging.system": "nats",
            "messaging.destination.name": subjects.request_subject(model),
        },
    )
    span.end(end_time=max(int(pulled * 1e9), int(published * 1e9)))
    return wait


def generate_attributes(
    request: ChatRequested, *, model: str, attempt: int, worker_id: str
) -> dict[str, str | int | float | bool]:
    attributes: dict[str, str | int | float | bool] = {
        "llmchat.request_id": request.request_id,
        "llmchat.attempt": attempt,
        "llmchat.model": model,
        "llmchat.kind": request.kind,
        "llmchat.source": request.source,
        "llmchat.priority": request.priority,
        "llmchat.worker_id": worker_id,
        "gen_ai.operation.name": "embeddings" if request.kind == "embedding" else "chat",
        "gen_ai.request.model": request.model,
    }
    if request.params.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.params.max_tokens
    attributes["gen_ai.request.temperature"] = request.params.temperature
    if request.conversation_id:
        attributes["llmchat.conversation_id"] = request.conversation_id
    return attributes


def record_outcome(span: Span, event: Terminal | Released, *, prompt_tokens: int | None = None) -> None:
    """How the attempt ended, on its `generate` span (ids and counts only, never text)."""
    span.set_attribute("llmchat.outcome", event.type)
    if isinstance(event, Released):
        span.set_attribute("llmchat.release_reason", event.reason)
        return
    usage = event.usage
    prompt = usage.prompt_tokens or prompt_tokens or 0
    span.set_attributes(
        {
            "llmchat.prompt_tokens": prompt,
            "llmchat.completion_tokens": usage.completion_tokens,
            "gen_ai.usage.input_tokens": prompt,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
        }
    )
    if isinstance(event, Completed):
        span.set_attribute("llmchat.finish_reason", event.finish_reason)
        span.set_attribute("gen_ai.response.finish_reasons", [event.finish_reason])
    elif isinstance(event, Cancelled):
        span.set_attribute("llmchat.cancel_reason", event.reason)
    else:
        span.set_attribute("llmchat.error_code", event.code)
        span.set_status(Status(StatusCode.ERROR, event.code))
