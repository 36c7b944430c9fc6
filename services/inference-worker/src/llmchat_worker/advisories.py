"""What every worker hears besides its own requests: cancels (each acts on its own requests) and
JetStream's max-deliveries advisories (a request that used up its deliveries ends `failed`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict

from llmchat_common import subjects
from llmchat_common.contracts import CancelRequest, ChatRequested, Failed, parse_request
from llmchat_common.logging import log_context
from llmchat_common.messaging import jetstream
from llmchat_common.request_log import progress_of, read_request_log
from llmchat_common.telemetry import consumer_span, inject, tracer
from llmchat_worker.fencing import Fence, claim_of, is_fenced
from llmchat_worker.handlers import RequestConsumer

log = logging.getLogger(__name__)


async def fail_exhausted_request(js: JetStreamContext, stream_seq: int, deliveries: int) -> None:
    """A request that used up max_deliver (e.g. its workers kept dying) ends `failed`, so its
    client gets a clear error instead of waiting for the deadline. Every worker of the model
    hears the advisory; the message id makes the event exist once."""
    raw = await js.get_msg(subjects.REQUESTS_STREAM, stream_seq)
    request = parse_request(raw.data or b"", log_seq=stream_seq)
    with (
        log_context(request_id=request.request_id, user_id=request.user_id),
        consumer_span(
            tracer("llmchat_worker"),
            "request exhausted",
            raw.headers,
            {"llmchat.request_id": request.request_id, "llmchat.attempt": deliveries},
        ),
    ):
        await _publish_exhausted(js, request, deliveries)


async def _publish_exhausted(js: JetStreamContext, request: ChatRequested, deliveries: int) -> None:
    """The request's outcome, unless it has one: a last attempt of the log's own ("jetstream",
    one after the deliveries) claims it and fails it, fenced like a worker's (`fencing`), so a
    paused worker of an earlier attempt cannot end it too."""
    logged = await read_request_log(js._nc, request.request_id)
    if progress_of(logged).finished:
        log.info("exhausted request already finished", extra={"deliveries": deliveries})
        return
    event = Failed(
        request_id=request.request_id,
        attempt=deliveries + 1,
        seq=1,
        worker_id="jetstream",
        ts=time.time(),
        **request.facts(),
        code="max_deliveries",
        message=f"the request failed on all {deliveries} deliveries",
        retriable=False,
    )
    claim = claim_of(event).model_copy(update={"seq": 0})
    fence = Fence(request.request_id, logged[-1].stream_seq if logged else 0)
    try:
        for step in (claim, event):
            ack = await js.publish(
                subjects.event_subject(request.request_id, step.type),
                step.model_dump_json().encode(),
                headers=inject(
                    {
                        "Nats-Msg-Id": f"{request.request_id}:exhausted:{step.type}",
                        **fence.headers(),
                    }
                ),
            )
            fence.started_seq = ack.seq
    except Exception as exc:
        if not is_fenced(exc):
            raise
        # Another worker that heard the advisory, or an attempt that came back, was first.
        log.info("exhausted request ended by another", extra={"deliveries": deliveries})
        return
    log.error("request exhausted its deliveries", extra={"deliveries": deliveries})


class MaxDeliveriesAdvisory(BaseModel):
    model_config = ConfigDict(extra="ignore")

    stream_seq: int
    deliveries: int


def register_handlers(broker: NatsBroker, consumer: Callable[[], RequestConsumer | None]) -> None:
    register_cancel_handler(broker, consumer)

    # Every model's advisories (the worker's model changes with a switch), acted on for the
    # model it serves now.
    @broker.subscriber(subjects.max_deliveries_wildcard())
    async def on_exhausted(advisory: MaxDeliveriesAdvisory, message: NatsMessage) -> None:
        current = consumer()
        if current is None or message.raw_message.subject != subjects.max_deliveries_advisory(current.alias):
            return
        await fail_exhausted_request(jetstream(broker), advisory.stream_seq, advisory.deliveries)


def register_cancel_handler(broker: NatsBroker, consumer: Callable[[], RequestConsumer | None]) -> None:
    """Every worker hears every cancel (no queue group) and acts only on its own requests."""

    @broker.subscriber(subjects.cancel_wildcard())
    async def on_cancel(request: CancelRequest, message: NatsMessage) -> None:
        current = consumer()
        if current is not None:
            current.cancel(request, message.headers)
