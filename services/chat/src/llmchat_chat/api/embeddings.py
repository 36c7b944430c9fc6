"""`POST /v1/embeddings`: OpenAI's embeddings, through the same pipeline as a chat completion.

The request is checked here (the model exists and makes embeddings, the inputs are well formed
and few enough for their vectors to fit in one event, `dimensions` only where the model supports
it), admitted by the model's queue bound and the caller's limits (its tokens reserved from the
inputs' length), published to the model's request subject with `Nats-Msg-Id` = request id, and
followed to its terminal event, whose `embeddings` are the answer. Usage is counted once by the
metrics projection from that terminal event (prompt tokens only); history stores nothing (no
conversation). What the worker finds wrong with the input (a token id outside the vocabulary, an
input longer than the context) comes back as `failed` with `invalid_request`: a 400 naming
`input`, as every refusal made here.
"""

from __future__ import annotations

import math
import time
import uuid

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmchat_chat import errors
from llmchat_chat.api.chat import ClientDisconnected, settle, until_disconnected
from llmchat_chat.api.deps import Caller, CallerDep, LimiterDep, ServiceDep
from llmchat_chat.api.embedding_schemas import (
    EmbeddingRequest,
    check_dimensions,
    embedding_list,
    max_inputs,
    parse_input,
)
from llmchat_chat.api.request_checks import check_kind, known_model, submit_admitted
from llmchat_chat.errors import ApiError
from llmchat_chat.ratelimit import Admission, Limiter
from llmchat_chat.service import ChatService, Submitted, terminal_error
from llmchat_chat.settings import LimitSettings
from llmchat_common.contracts import PRIORITY_DEFAULT, Cancelled, ChatRequested, Completed, Failed
from llmchat_common.logging import bind_log_fields
from llmchat_common.telemetry import trace_id_of

router = APIRouter(tags=["embeddings"])

# A text's special tokens around its words (BERT's [CLS] and [SEP]), for the reservation.
SPECIAL_TOKENS = 2


def new_embedding_id() -> str:
    return f"embd-{uuid.uuid4().hex}"


async def to_request(body: EmbeddingRequest, service: ChatService, caller: Caller) -> ChatRequested:
    settings = service.settings
    capabilities = await known_model(service, body.model)
    check_kind(
        body.model,
        capabilities,
        "embedding",
        "is a chat model: it makes no embeddings (use /v1/chat/completions)",
    )
    check_dimensions(body.model, body.dimensions, capabilities)
    inputs = parse_input(
        body.input,
        max_inputs=max_inputs(capabilities, settings.nats.max_msg_bytes),
        max_chars=settings.max_message_chars,
    )
    context = await service.context_of(body.model)
    if context is not None and not isinstance(inputs[0], str):
        for i, ids in enumerate(inputs):
            if len(ids) > context:
                where = f"input[{i}]" if len(inputs) > 1 else "input"
                raise ApiError(
                    f"{where} has {len(ids)} tokens; this model reads at most {context} tokens per input",
                    param="input",
                )
    now = time.time()
    request_id = new_embedding_id()
    bind_log_fields(request_id=request_id)
    return ChatRequested(
        request_id=request_id,
        model=body.model,
        messages=[],
        kind="embedding",
        inputs=inputs,
        user_id=caller.user_id,
        api_key_id=caller.principal.api_key_id,
        trace_id=trace_id_of(),
        # The caller waits for the whole answer; leaving cancels it.
        disconnect="cancel",
        priority=PRIORITY_DEFAULT,
        created_at=now,
        deadline=service.deadline_for(body.timeout, now),
    )


def reservation(request: ChatRequested, limits: LimitSettings, context: int | None) -> int:
    """Tokens held against the per-minute budget until the worker counts them: a token array's
    length, a text's estimated from its characters (at most the model's context each)."""
    total = 0
    for item in request.inputs or []:
        tokens = len(item) if not isinstance(item, str) else math.ceil(len(item) / limits.chars_per_token)
        tokens += SPECIAL_TOKENS if isinstance(item, str) else 0
        total += min(tokens, context) if context else tokens
    return max(1, total)


async def admit(service: ChatService, limiter: Limiter, caller: Caller, request: ChatRequested) -> Admission:
    """The model's queue bound, then the caller's rate limits (as a chat completion's)."""
    await service.admit(request.model, job=False)
    principal = caller.principal
    return await limiter.admit(
        limiter.scopes(principal.user_id, principal.role, principal.api_key_id),
        request.request_id,
        reservation(request, service.settings.limits, await service.context_of(request.model)),
        hold_until=request.deadline + service.settings.deadline_grace_s,
    )


def embedding_error(event: Failed | Cancelled) -> ApiError:
    """The worker's refusals name the field they are about: the model (a request that reached a
    worker of another kind, when no worker was live to check against here) or the input."""
    if isinstance(event, Failed) and event.code == "invalid_request":
        param = "model" if event.message.startswith("the model ") else "input"
        return errors.InvalidRequest(event.message, param=param)
    return terminal_error(event)


async def outcome(service: ChatService, handle: Submitted, admission: Admission) -> Completed:
    """The terminal event of the newest attempt (an older attempt's, arriving late, is not the
    request's outcome)."""
    first = await service.wait_started(handle)
    attempt = first.event.attempt
    event = first.event
    while True:
        if event.attempt >= attempt:
            attempt = event.attempt
            if isinstance(event, Completed | Failed | Cancelled):
                settle(admission, event)
                if isinstance(event, Completed):
                    return event
                raise embedding_error(event)
        event = await handle.next_event()


@router.post("/v1/embeddings")
async def create_embeddings(
    body: EmbeddingRequest,
    http_request: Request,
    service: ServiceDep,
    caller: CallerDep,
    limiter: LimiterDep,
) -> Response:
    request = await to_request(body, service, caller)
    admission = await admit(service, limiter, caller, request)
    handle = await submit_admitted(service, limiter, request, admission)
    try:
        completed = await until_disconnected(http_request, outcome(service, handle, admission))
    except ApiError as exc:
        exc.headers.setdefault("X-Request-Id", request.request_id)
        raise
    except ClientDisconnected:
        service.in_background(service.cancel(request.request_id, "client"))
        return Response(status_code=499)
    finally:
        await limiter.release(admission)
        await handle.close()
    vectors = completed.embeddings or []
    if len(vectors) != len(request.inputs or []):
        raise errors.UpstreamFailed(
            f"the worker returned {len(vectors)} embeddings for {len(request.inputs or [])} inputs",
            code="embedding_mismatch",
            headers={"X-Request-Id": request.request_id},
        )
    content = embedding_list(
        body.model,
        vectors,
        completed.usage,
        encoding_format=body.encoding_format,
        dimensions=body.dimensions,
    )
    return Response(
        orjson.dumps(content),
        media_type="application/json",
        headers={"X-Request-Id": request.request_id, **admission.headers},
    )
