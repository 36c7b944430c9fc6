from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

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
T = TypeVar("T")
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


class ClientDisconnected(Exception):
    """The caller went away before the response started."""


async def until_disconnected(http_request: Request, work: Awaitable[T]) -> T:
    """Runs `work` unless the client disconnects first (e.g. while its request is queued)."""

    async def watch() -> None:
        # The body is already read: the next ASGI message is the disconnect, if any.
        while (await http_request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnected
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


@router.post("/v1/chat/completions")
async def create_chat_completion(
    body: ChatCompletionRequest, http_request: Request, service: ServiceDep
) -> Response:
    request = await to_request(body, service)
    handle = await service.submit(request)
    try:
        return await respond(body, http_request, service, handle)
    except ClientDisconnected:
        if request.disconnect == "cancel":
            service.in_background(service.cancel(request.request_id, "client"))
        return Response(status_code=499)
    finally:
        if not body.stream:
            await handle.close()


async def respond(
    body: ChatCompletionRequest, http_request: Request, service: ChatService, handle: RequestHandle
) -> Response:
    request = handle.request
    try:
        first = await until_disconnected(http_request, service.wait_started(handle))
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
        return StreamingResponse(
            sse_frames(stream_chunks(service, handle, writer, first.attempt)),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    completed = await until_disconnected(http_request, collect(handle, first.attempt))
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


async def sse_frames(payloads: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """One SSE `data:` frame per payload. Starlette cancels this generator when the client
    disconnects, which runs stream_chunks' cleanup (the cancel)."""
    async for payload in payloads:
        yield b"data: " + payload.encode() + b"\n\n"


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
