from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from llmchat_chat.api.deps import get_service
from llmchat_chat.api.openai_format import ChunkWriter, completion_body
from llmchat_chat.api.schemas import ChatCompletionRequest
from llmchat_chat.errors import ApiError, ContextLengthExceeded, ModelNotFound, error_body
from llmchat_chat.service import ChatService, RequestHandle, new_request_id, terminal_error
from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    ChatRequested,
    Completed,
    Delta,
    Failed,
    GenerationParams,
)

router = APIRouter()
ServiceDep = Annotated[ChatService, Depends(get_service)]


async def to_request(body: ChatCompletionRequest, service: ChatService) -> ChatRequested:
    if not await service.registry.known(body.model):
        raise ModelNotFound(f"the model {body.model!r} does not exist", param="model")
    if len(body.messages) > service.settings.max_messages:
        raise ApiError(f"at most {service.settings.max_messages} messages", param="messages")
    max_tokens = body.wanted_max_tokens()
    workers = (await service.registry.live()).get(body.model, [])
    context = max((w.max_model_len for w in workers), default=None)
    if max_tokens is not None and context is not None and max_tokens >= context:
        raise ContextLengthExceeded(
            f"max_tokens ({max_tokens}) must be below this model's context of {context} tokens",
            param="max_tokens",
        )
    now = time.time()
    return ChatRequested(
        request_id=new_request_id(),
        model=body.model,
        messages=[
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
            for m in body.messages
        ],
        params=GenerationParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stops(),
            seed=body.seed,
            ignore_eos=body.ignore_eos,
        ),
        stream=body.stream,
        disconnect=body.disconnect or "cancel",
        created_at=now,
        deadline=service.deadline_for(body.timeout, now),
    )


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, service: ServiceDep) -> Response:
    request = await to_request(body, service)
    handle = await service.submit(request)
    try:
        first = await service.wait_started(handle)
        if isinstance(first, Failed | Cancelled):
            raise terminal_error(first)
    except BaseException:
        await handle.close()
        raise
    headers = {"X-Request-Id": request.request_id}
    created = int(request.created_at)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(request.request_id, body.model, created, include_usage)
        return EventSourceResponse(
            stream_chunks(service, handle, writer, first.attempt),
            headers=headers,
            sep="\n",
            ping=15,
        )
    try:
        completed = await collect(handle, first.attempt)
    finally:
        await handle.close()
    return Response(
        orjson.dumps(completion_body(request.request_id, body.model, created, completed)),
        media_type="application/json",
        headers=headers,
    )


async def collect(handle: RequestHandle, attempt: int) -> Completed:
    """Waits for the terminal event of the latest attempt (a redelivered attempt replaces an
    earlier one: its text is rebuilt from scratch, so nothing is duplicated)."""
    while True:
        event = await handle.next_event()
        if event.attempt < attempt:
            continue
        attempt = event.attempt
        if isinstance(event, Completed):
            return event
        if isinstance(event, Failed | Cancelled):
            raise terminal_error(event)


async def stream_chunks(
    service: ChatService, handle: RequestHandle, writer: ChunkWriter, attempt: int
) -> AsyncIterator[str]:
    finished = False
    sent_text = False
    try:
        yield writer.role()
        while True:
            try:
                event = await handle.next_event()
            except ApiError as exc:
                yield orjson.dumps(error_body(exc)).decode()
                break
            if event.attempt < attempt:
                continue
            if event.attempt > attempt:
                if sent_text:
                    # Until continuation lands, a restarted attempt after text was sent would
                    # repeat it: end with a clear, retriable error instead.
                    lost = ApiError("the worker serving this answer was lost; retry", code="worker_lost")
                    yield orjson.dumps(error_body(lost)).decode()
                    break
                attempt = event.attempt
            if isinstance(event, Delta):
                if event.text:
                    sent_text = True
                    yield writer.content(event.text)
            elif isinstance(event, Completed):
                yield writer.finish(event.finish_reason)
                if writer.include_usage:
                    yield writer.usage(event.usage)
                yield "[DONE]"
                finished = True
                break
            elif isinstance(event, Failed | Cancelled):
                yield orjson.dumps(error_body(terminal_error(event))).decode()
                yield "[DONE]"
                finished = True
                break
    finally:
        if not finished and handle.request.disconnect == "cancel":
            service.in_background(service.cancel(handle.request_id, "client"))
        service.in_background(handle.close())
