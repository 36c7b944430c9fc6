from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from llmchat_chat.api.chat_request import (
    check_capabilities,
    logit_bias_of,
    logprobs_of,
    messages_of,
    response_format_of,
    tools_of,
)
from llmchat_chat.api.chat_request import (
    choices_of as n_choices,
)
from llmchat_chat.api.chat_stream import ChoiceStream
from llmchat_chat.api.deps import Caller, CallerDep, ConversationsDep, LimiterDep, ServiceDep
from llmchat_chat.api.openai_format import ChunkWriter, choices_of, completion_body
from llmchat_chat.api.request_checks import check_max_tokens, known_model, submit_admitted
from llmchat_chat.api.schemas import ChatCompletionRequest
from llmchat_chat.conversations import ConversationGuard
from llmchat_chat.errors import (
    ApiError,
    error_body,
)
from llmchat_chat.following import Diverged, SeqTracker
from llmchat_chat.ratelimit import Admission, Limiter
from llmchat_chat.service import ChatService, Submitted, new_request_id, terminal_error
from llmchat_chat.settings import LimitSettings
from llmchat_common.contracts import (
    PRIORITY_BACKGROUND,
    PRIORITY_DEFAULT,
    AnyEvent,
    Cancelled,
    ChatRequested,
    Completed,
    Delta,
    Failed,
    GenerationParams,
    RequestSource,
)
from llmchat_common.logging import bind_log_fields
from llmchat_common.request_log import LoggedEvent
from llmchat_common.telemetry import trace_id_of

log = logging.getLogger(__name__)

router = APIRouter()
T = TypeVar("T")


async def to_request(
    body: ChatCompletionRequest,
    service: ChatService,
    caller: Caller,
    *,
    conversation: str | None,
    source: RequestSource = "chat",
    webhook_url: str | None = None,
    request_id: str | None = None,
) -> ChatRequested:
    settings = service.settings
    check_capabilities(body, await known_model(service, body.model))
    if len(body.messages) > settings.max_messages:
        raise ApiError(f"at most {settings.max_messages} messages", param="messages")
    for i, message in enumerate(body.messages):
        if len(message.text()) > settings.max_message_chars:
            raise ApiError(
                f"a message may hold at most {settings.max_message_chars} characters",
                param=f"messages.{i}.content",
            )
    max_tokens = body.wanted_max_tokens()
    check_max_tokens(max_tokens, await service.context_of(body.model))
    messages = messages_of(body)
    tools, tool_choice = tools_of(body)
    now = time.time()
    request_id = request_id or new_request_id()
    bind_log_fields(request_id=request_id)
    return ChatRequested(
        request_id=request_id,
        model=body.model,
        messages=messages,
        params=GenerationParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stops(),
            seed=body.seed,
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repetition_penalty=body.repetition_penalty,
            top_k=body.top_k,
            min_p=body.min_p,
            logit_bias=logit_bias_of(body),
            logprobs=logprobs_of(body),
            n=n_choices(body),
            response_format=response_format_of(body),
        ),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        user_id=caller.user_id,
        api_key_id=caller.principal.api_key_id,
        conversation_id=conversation,
        regenerate=body.regenerate,
        # The server span's trace: the caller's own when it sent a `traceparent`.
        trace_id=trace_id_of(),
        stream=body.stream and source == "chat",
        # A streamed answer is cancelled when its client leaves; a job runs to its end.
        disconnect=body.disconnect or ("cancel" if source == "chat" else "detach"),
        source=source,
        # A job waits its turn behind people watching an answer (vLLM priority scheduling).
        priority=PRIORITY_DEFAULT if source == "chat" else PRIORITY_BACKGROUND,
        webhook_url=webhook_url,
        created_at=now,
        deadline=service.deadline_for(body.timeout, now),
    )


async def conversation_for(
    body: ChatCompletionRequest, caller: Caller, conversations: ConversationGuard
) -> str | None:
    """The conversation the turn is stored in, as OpenAI's `store` says: a named one, else a new
    one when the turn is stored (by default for a login session, whose chats are the web app's;
    not for an API key, as OpenAI's default, so that a client's side calls leave no
    conversations behind); None: not stored."""
    if body.conversation_id is not None:
        return await conversations.resolve(body.conversation_id, caller.user_id)
    store = body.store if body.store is not None else caller.claims is not None
    return await conversations.resolve(None, caller.user_id) if store else None


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


async def admit(service: ChatService, limiter: Limiter, caller: Caller, request: ChatRequested) -> Admission:
    """The model's queue bound (interactive or job), then the caller's rate limits."""
    await service.admit(request.model, job=request.source == "job")
    principal = caller.principal
    return await limiter.admit(
        limiter.scopes(principal.user_id, principal.role, principal.api_key_id),
        request.request_id,
        reservation(request, service.settings.limits, await service.context_of(request.model)),
        hold_until=request.deadline + service.settings.deadline_grace_s,
    )


def reservation(request: ChatRequested, limits: LimitSettings, context: int | None) -> int:
    """Tokens held against the per-minute budget until the real usage is known: the prompt,
    estimated from its length, plus the most the answer may take (without max_tokens, the rest
    of the model's context when it is known)."""
    chars = sum(len(m.content) for m in request.messages)
    prompt = math.ceil(chars / limits.chars_per_token) + 4 * len(request.messages)
    answer = request.params.max_tokens
    if answer is None:
        answer = max(1, context - prompt) if context else limits.default_reserve_tokens
    return prompt + answer


@router.post(
    "/v1/chat/completions",
    responses={
        200: {
            "description": "a `chat.completion` object, or with `stream: true` an SSE stream of "
            "`chat.completion.chunk` objects ending with `data: [DONE]`",
            "content": {
                "application/json": {},
                # Describes each event (OpenAPI before 3.2 has no itemSchema): a `data:` line.
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {"data": {"type": "string"}},
                        "required": ["data"],
                    }
                },
            },
        }
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    http_request: Request,
    service: ServiceDep,
    caller: CallerDep,
    limiter: LimiterDep,
    conversations: ConversationsDep,
) -> Response:
    conversation = await conversation_for(body, caller, conversations)
    request = await to_request(body, service, caller, conversation=conversation)
    admission = await admit(service, limiter, caller, request)
    return await serve_admitted(
        service,
        limiter,
        request,
        admission,
        lambda handle: respond(body, http_request, service, handle, admission, limiter),
    )


async def serve_admitted(
    service: ChatService,
    limiter: Limiter,
    request: ChatRequested,
    admission: Admission,
    respond: Callable[[Submitted], Awaitable[Response]],
) -> Response:
    """Queues an admitted request and answers with what `respond` makes of its events: a whole
    answer (the handle is closed and the budget settled before it leaves) or a stream (which
    does both when it ends)."""
    handle = await submit_admitted(service, limiter, request, admission)
    streaming = False
    try:
        response = await respond(handle)
        streaming = isinstance(response, StreamingResponse)
        return response
    except ApiError as exc:
        # The request exists (its events, its job): the caller can look it up.
        exc.headers.setdefault("X-Request-Id", request.request_id)
        raise
    except ClientDisconnected:
        if request.disconnect == "cancel":
            service.in_background(service.cancel(request.request_id, "client"))
        return Response(status_code=499)
    finally:
        if not streaming:
            # Before the answer leaves: the caller's next request sees the settled budget. A
            # streamed answer releases its slot when its stream ends (stream_chunks).
            await limiter.release(admission)
            await handle.close()


def settle(admission: Admission, event: AnyEvent) -> None:
    """Records the real usage of a finished request (partial for a failed or cancelled one)."""
    if isinstance(event, Completed | Failed | Cancelled):
        admission.used_tokens = event.usage.total_tokens


async def respond(
    body: ChatCompletionRequest,
    http_request: Request,
    service: ChatService,
    handle: Submitted,
    admission: Admission,
    limiter: Limiter,
) -> Response:
    request = handle.request
    first = await first_event(http_request, service, handle, admission)
    conversation = request.conversation_id
    headers = {"X-Request-Id": request.request_id, **admission.headers}
    if conversation is not None:
        headers["X-Conversation-Id"] = conversation
    created = int(request.created_at)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(request.request_id, body.model, created, include_usage, conversation)
        return AbandonableStream(
            sse_frames(stream_chunks(service, handle, writer, first, admission, limiter)),
            abandoned=lambda: client_left(service, handle, admission, limiter),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    completed = await until_disconnected(http_request, collect(handle, first.event.attempt, admission))
    return Response(
        orjson.dumps(completion_body(request.request_id, body.model, created, completed, conversation)),
        media_type="application/json",
        headers=headers,
    )


async def first_event(
    http_request: Request, service: ChatService, handle: Submitted, admission: Admission
) -> LoggedEvent:
    """The request's `started` (a 4xx/5xx if it ended before it did)."""
    first = await until_disconnected(http_request, service.wait_started(handle))
    if isinstance(first.event, Failed | Cancelled):
        settle(admission, first.event)
        raise terminal_error(first.event)
    return first


async def collect(handle: Submitted, attempt: int, admission: Admission) -> Completed:
    """Waits for the terminal event of the latest attempt (its text is the whole answer,
    whether the attempt continued an earlier one or started over)."""
    while True:
        event = await handle.next_event()
        if event.attempt < attempt:
            continue
        attempt = event.attempt
        settle(admission, event)
        if isinstance(event, Completed):
            return event
        if isinstance(event, Failed | Cancelled):
            raise terminal_error(event)


Frame = tuple[int | None, str]


async def sse_frames(frames: AsyncIterator[Frame]) -> AsyncIterator[bytes]:
    """One SSE `data:` frame per payload, with the stream sequence of the event it came from
    as its `id:` (a client resumes after it at /v1/jobs/{id}/events with `Last-Event-ID`).
    Starlette cancels this generator when the client disconnects, which runs stream_chunks'
    cleanup (the cancel)."""
    try:
        async for seq, payload in frames:
            head = b"" if seq is None else b"id: %d\n" % seq
            yield head + b"data: " + payload.encode() + b"\n\n"
    finally:
        await close_iterator(frames)


async def close_iterator(iterator: object) -> None:
    """Closes an async generator now (its `finally` runs: the cancel of an answer whose client
    left). Left to the garbage collector, a generator caught in a reference cycle was closed
    only seconds later, after the answer it should have cancelled had ended."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def tagged(seq: int | None, chunks: list[str]) -> list[Frame]:
    """The chunks one event makes, only the last with the event's id: a client cut off between
    them resumes (`Last-Event-ID`) from the event before, and gets all of this one again. With
    the id on each, a client cut after the first of a terminal event's chunks (the answer's
    rest, then its `finish_reason`) would ask to resume after the end, and get nothing."""
    return [(seq if i == len(chunks) - 1 else None, chunk) for i, chunk in enumerate(chunks)]


async def stream_chunks(
    service: ChatService,
    handle: Submitted,
    writer: ChunkWriter,
    first: LoggedEvent,
    admission: Admission,
    limiter: Limiter,
) -> AsyncIterator[Frame]:
    finished = False
    request = handle.request
    streams = [ChoiceStream(writer, request, index) for index in range(request.params.n)]
    gaps = SeqTracker()
    for stream in streams:
        stream.current(first.event)
    gaps.hole(first.event)
    try:
        for index in range(len(streams)):
            yield (first.stream_seq if index == 0 else None), writer.role(index)
        while True:
            try:
                logged = await handle.next()
            except ApiError as exc:
                yield None, orjson.dumps(error_body(exc)).decode()
                break
            assert logged is not None
            event, seq = logged.event, logged.stream_seq
            if not all([stream.current(event) for stream in streams]):
                continue
            if gaps.hole(event):
                # Which choice lost text is unknown: all hold until the terminal event.
                log.warning("events lost", extra={"request_id": request.request_id, "seq": event.seq})
                for stream in streams:
                    stream.holed = True
            if isinstance(event, Delta):
                if event.index >= len(streams):
                    continue
                try:
                    chunks = streams[event.index].delta(event)
                except Diverged:
                    lost = ApiError("the worker serving this answer was lost; retry", code="worker_lost")
                    yield seq, orjson.dumps(error_body(lost)).decode()
                    break
                for frame in tagged(seq, chunks):
                    yield frame
            elif isinstance(event, Completed):
                settle(admission, event)
                try:
                    ends = [
                        streams[choice.index].finish(choice)
                        for choice in choices_of(event)
                        if choice.index < len(streams)
                    ]
                except Diverged:
                    lost = ApiError(
                        "the answer streamed differs from the stored one; retry", code="worker_lost"
                    )
                    yield seq, orjson.dumps(error_body(lost)).decode()
                    yield None, "[DONE]"
                    finished = True
                    break
                for frame in tagged(seq, [chunk for chunks in ends for chunk in chunks]):
                    yield frame
                if writer.include_usage:
                    yield None, writer.usage(event.usage)
                yield None, "[DONE]"
                finished = True
                break
            elif isinstance(event, Failed | Cancelled):
                settle(admission, event)
                yield seq, orjson.dumps(error_body(terminal_error(event))).decode()
                yield None, "[DONE]"
                finished = True
                break
    finally:
        if finished:
            service.in_background(handle.close())
            service.in_background(limiter.release(admission))
        else:
            client_left(service, handle, admission, limiter)


class AbandonableStream(StreamingResponse):
    """A streamed answer whose body may never start: when the client leaves between the
    response's start and its first chunk, Starlette cancels the body's task before the generator
    runs, so the generator's own cleanup never does; `abandoned` runs instead."""

    def __init__(
        self, content: AsyncIterator[bytes], *, abandoned: Callable[[], None], **kwargs: Any
    ) -> None:
        self._begun = False
        self._abandoned = abandoned
        super().__init__(self._mark(content), **kwargs)

    async def _mark(self, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self._begun = True
        try:
            async for chunk in content:
                yield chunk
        finally:
            await close_iterator(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._begun:
                self._abandoned()
            else:
                # The client left mid-stream: close the body's generators at once.
                await close_iterator(self.body_iterator)


def client_left(service: ChatService, handle: Submitted, admission: Admission, limiter: Limiter) -> None:
    """The client went away before the answer ended: cancel per its policy, and settle the
    budget with what the request really used once it ends."""
    if handle.request.disconnect == "cancel":
        service.in_background(service.cancel(handle.request_id, "client"))
    service.in_background(settle_after_client_left(handle, admission, limiter))


async def settle_after_client_left(handle: Submitted, admission: Admission, limiter: Limiter) -> None:
    """The client left mid-answer: the worker still ends the request (cancelled, or completed
    when detached) and says what it used; the budget is charged that, not the reservation. The
    request's deadline bounds the wait."""
    try:
        while True:
            event = await handle.next_event()
            if isinstance(event, Completed | Failed | Cancelled):
                settle(admission, event)
                break
    except ApiError:
        pass  # the deadline passed: the reservation stands
    finally:
        await handle.close()
        await limiter.release(admission)
