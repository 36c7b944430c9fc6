"""The OpenAI Responses API on the event log.

A response is a chat request of kind `response` whose id is the response id (`resp_...`): it
is queued, admitted, limited, run, failed over and counted like any chat request, and its
Responses fields ride with it (`ResponseFacts`) on its request and on its `started` and terminal
events. So the log alone says what a response is, at any edge and after any restart:
- `GET /v1/responses/{id}` reads the response's last `started` and terminal events (a queued
  background response, not yet started, is known from Redis like a queued job; past the log's
  retention, the history service keeps its terminal event: `llmchat_chat.responses`);
- `previous_response_id` walks the chain back the same way: each response's input items and
  output, oldest first, then this request's input (instructions are not carried over, as
  OpenAI does);
- `GET ...?stream=true&starting_after=N` renders the response's events again from the log and
  follows it live (`responses_format`).
A stored response (`store`, the default) is also a turn of a conversation in history: a chain of
responses is one conversation, which the web app shows. `store: false` responses are not
retrievable and start no conversation. Usage is counted once per response (kind `response`).

Background responses run as jobs do (detached from any client, at background priority) and
are listed in `/v1/jobs` too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llmchat_chat.api.chat import (
    AbandonableStream,
    admit,
    client_left,
    collect,
    first_event,
    serve_admitted,
    settle,
    to_request,
    until_disconnected,
)
from llmchat_chat.api.chat_request import check_schema
from llmchat_chat.api.deps import (
    Caller,
    CallerDep,
    ConversationsDep,
    JobsDep,
    LimiterDep,
    ResponsesDep,
    ServiceDep,
)
from llmchat_chat.api.responses_format import ResponseStream, ResponseView
from llmchat_chat.api.responses_schema import (
    ResponsesRequest,
    TextFormatIn,
    ToolChoiceIn,
    check_tools,
    input_items,
    messages_of_items,
)
from llmchat_chat.api.schemas import ChatCompletionRequest
from llmchat_chat.conversations import ConversationGuard
from llmchat_chat.errors import ApiError
from llmchat_chat.ratelimit import Admission, Limiter
from llmchat_chat.responses import ResponseDirectory
from llmchat_chat.service import ChatService, RequestHandle, Submitted
from llmchat_common.contracts import ChatRequested, ResponseFacts
from llmchat_common.request_log import LoggedEvent

router = APIRouter(tags=["responses"])

# Chat-completions field names (in errors of the shared checks) as the Responses API has them.
PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def _renamed(exc: ApiError) -> ApiError:
    """An error of a shared chat-completions check, naming the Responses field."""
    if exc.param is not None:
        head, _, rest = exc.param.partition(".")
        if head in PARAMS:
            exc.param = PARAMS[head] if head == "messages" else ".".join(filter(None, (PARAMS[head], rest)))
    return exc


def _format_of(body: ResponsesRequest) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the chat `response_format`, the `text` the Response object shows)."""
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None, {"format": {"type": "text"}}
    if fmt.type == "json_object":
        return {"type": "json_object"}, {"format": {"type": "json_object"}}
    assert isinstance(fmt, TextFormatIn) and fmt.schema_ is not None
    schema = check_schema(fmt.schema_, "text.format.schema")
    shown = {"type": "json_schema", "name": fmt.name, "schema": schema, "strict": fmt.strict}
    if fmt.description is not None:
        shown["description"] = fmt.description
    chat = {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": schema, "strict": fmt.strict}}
    return chat, {"format": shown}


def _tools_of(body: ResponsesRequest) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(the chat `tools`, the `tools` the Response object shows)."""
    chat: list[dict[str, Any]] = []
    shown: list[dict[str, Any]] = []
    for i, tool in enumerate(body.tools or []):
        if tool.parameters is not None:
            check_schema(tool.parameters, f"tools.{i}.parameters")
        function: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        }
        if tool.strict is not None:
            function["strict"] = tool.strict
        chat.append({"type": "function", "function": function})
        shown.append({"type": "function", **function, "strict": tool.strict})
    return chat or None, shown


def _tool_choice(body: ResponsesRequest) -> tuple[Any, Any]:
    """(the chat `tool_choice`, the `tool_choice` the Response object shows)."""
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceIn):
        return {"type": "function", "function": {"name": choice.name}}, {
            "type": "function",
            "name": choice.name,
        }
    return choice, choice or "auto"


async def to_response_request(
    body: ResponsesRequest,
    service: ChatService,
    caller: Caller,
    conversations: ConversationGuard,
    responses: ResponseDirectory,
    response_id: str,
) -> ChatRequested:
    """The chat request a response is (every check of a chat completion applies)."""
    check_tools(body)
    items = input_items(body, response_id)
    earlier: list[dict[str, Any]] = []
    conversation: str | None = None
    if body.previous_response_id is not None:
        earlier, conversation = await responses.chain(body.previous_response_id, caller.user_id)
    store = body.store is not False
    background = bool(body.background)
    if background and not store:
        raise ApiError("a background response must be stored (store: true)", param="store")
    if store:
        conversation = await conversations.resolve(conversation, caller.user_id)
    else:
        conversation = None
    response_format, text = _format_of(body)
    chat_tools, tools = _tools_of(body)
    chat_choice, tool_choice = _tool_choice(body)
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + (
        messages_of_items(earlier + items)
    )
    try:
        chat = ChatCompletionRequest.model_validate(
            {
                "model": body.model,
                "messages": messages,
                "stream": bool(body.stream) and not background,
                "temperature": body.temperature,
                "top_p": body.top_p,
                "max_completion_tokens": body.max_output_tokens,
                "tools": chat_tools,
                "tool_choice": chat_choice,
                "parallel_tool_calls": body.parallel_tool_calls,
                "response_format": response_format,
                "timeout": body.timeout,
                "seed": body.seed,
                "ignore_eos": body.ignore_eos,
            }
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ApiError(f"input: {error['msg']}", param="input") from None
    try:
        request = await to_request(
            chat,
            service,
            caller,
            conversation=conversation,
            source="job" if background else "chat",
            request_id=response_id,
        )
    except ApiError as exc:
        raise _renamed(exc) from None
    facts = ResponseFacts(
        input=items,
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        metadata=body.metadata or {},
        background=background,
        store=store,
        echo={
            "max_output_tokens": body.max_output_tokens,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "text": text,
            "tools": tools,
            "tool_choice": tool_choice,
        },
    )
    return request.model_copy(
        update={
            "kind": "response",
            "response": facts,
            # Someone may see its text as it comes: it never starts over (responses_format).
            # With tools offered nothing is shown before the end, so it may start over.
            "no_reset": (bool(body.stream) or background) and not request.tools_active(),
            "stream": bool(body.stream),
        }
    )


def response_view(request: ChatRequested) -> ResponseView:
    assert request.response is not None
    return ResponseView(request.request_id, request.model, request.created_at, request.response)


def sse(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# A Response object, or with `stream: true` an SSE stream of its events (OpenAPI before 3.2 has
# no itemSchema: each event is described as `event:` and `data:` lines).
RESPONSE_OR_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a `response` object, or with `stream: true` an SSE stream of Responses events",
        "content": {
            "application/json": {},
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                    "required": ["data"],
                }
            },
        },
    }
}


@router.post("/v1/responses", responses=RESPONSE_OR_EVENTS)
async def create_response(
    body: ResponsesRequest,
    http_request: Request,
    service: ServiceDep,
    caller: CallerDep,
    limiter: LimiterDep,
    conversations: ConversationsDep,
    jobs: JobsDep,
    responses: ResponsesDep,
) -> Response:
    request = await to_response_request(body, service, caller, conversations, responses, new_response_id())
    admission = await admit(service, limiter, caller, request)
    headers = {"X-Request-Id": request.request_id, **admission.headers}
    if request.conversation_id is not None:
        headers["X-Conversation-Id"] = request.conversation_id
    if request.response is not None and request.response.background:
        try:
            await service.submit(request, follow=False)
        except BaseException:
            admission.used_tokens = 0  # never queued: nothing was used
            raise
        finally:
            await limiter.release(admission)  # held at its reservation, as a job's tokens are
        await jobs.remember(request)
        view = response_view(request)
        if body.stream:
            stream = ResponseStream(view)
            handle = await service.follow(request.request_id, after_seq=0, give_up_at=_give_up(service))
            return _followed(service, _follow(stream, handle, after=-1), handle, headers)
        return JSONResponse(view.body(), headers=headers)

    async def respond(handle: Submitted) -> Response:
        first = await first_event(http_request, service, handle, admission)
        view = response_view(request)
        view.status = "in_progress"  # it has started (`response.created` says so, as OpenAI's)
        if body.stream:
            stream = ResponseStream(view)
            return AbandonableStream(
                _live(stream, first, handle, service, admission, limiter),
                abandoned=lambda: client_left(service, handle, admission, limiter),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        view.saw(await until_disconnected(http_request, collect(handle, first.event.attempt, admission)))
        return JSONResponse(view.body(), headers=headers)

    return await serve_admitted(service, limiter, request, admission, respond)


def _give_up(service: ChatService) -> float:
    settings = service.settings
    return time.time() + settings.max_timeout_s + settings.deadline_grace_s


def _followed(
    service: ChatService, frames: AsyncIterator[bytes], handle: RequestHandle, headers: dict[str, str]
) -> Response:
    """A stream that follows the log: its subscription is closed when it ends, also when the
    client left before its body began (`AbandonableStream`)."""
    return AbandonableStream(
        frames,
        abandoned=lambda: service.in_background(handle.close()),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _event_stream(frames: AsyncIterator[bytes], headers: dict[str, str]) -> Response:
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _live(
    stream: ResponseStream,
    first: LoggedEvent,
    handle: Submitted,
    service: ChatService,
    admission: Admission,
    limiter: Limiter,
) -> AsyncIterator[bytes]:
    """A streamed response its client watches live: its budget is settled when it ends, and
    it is cancelled if the client leaves first."""
    finished = False
    try:
        for event in stream.opening() + stream.take(first.event):
            yield sse(event)
        while not stream.view.ended:
            try:
                logged = await handle.next()
            except ApiError as exc:
                yield sse({"type": "error", "sequence_number": stream.seq + 1, **_error(exc)})
                break
            assert logged is not None
            settle(admission, logged.event)
            for event in stream.take(logged.event):
                yield sse(event)
        finished = True
    finally:
        if finished:
            service.in_background(handle.close())
            service.in_background(limiter.release(admission))
        else:
            client_left(service, handle, admission, limiter)


def _error(exc: ApiError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "param": exc.param}


async def _follow(stream: ResponseStream, handle: RequestHandle, *, after: int) -> AsyncIterator[bytes]:
    """A response's events rendered from its log (stored, then live), from `after` on; watching
    never cancels it."""
    try:
        for event in stream.opening():
            if event["sequence_number"] > after:
                yield sse(event)
        while not stream.view.ended:
            try:
                logged = await handle.next(idle_s=15.0)
            except ApiError as exc:
                yield sse({"type": "error", "sequence_number": stream.seq + 1, **_error(exc)})
                return
            if logged is None:
                yield b": keep-alive\n\n"
                continue
            for event in stream.take(logged.event):
                if event["sequence_number"] > after:
                    yield sse(event)
    finally:
        await handle.close()


@router.get("/v1/responses/{response_id}", responses=RESPONSE_OR_EVENTS)
async def get_response(
    response_id: str,
    caller: CallerDep,
    responses: ResponsesDep,
    service: ServiceDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    view = await responses.find(response_id, caller.user_id)
    if not stream:
        return JSONResponse(view.body())
    if not view.facts.background:
        raise ApiError("only a background response can be streamed again", param="stream")
    after = -1 if starting_after is None else starting_after
    renderer = ResponseStream(ResponseView(view.id, view.model, view.created_at, view.facts))
    if view.ended:
        # Rendered whole from the stored events: a `starting_after` past its end is refused.
        events = renderer.opening()
        logged = await service.stored_events(response_id, limit=100_000)
        # Past the log's retention, from its stored terminal event alone.
        kept = [view.terminal] if view.terminal is not None else []
        for event in [e.event for e in logged] or kept:
            events += renderer.take(event)
        if after >= len(events) - 1:
            raise ApiError(
                f"starting_after {after} is at or past the stream's last event ({len(events) - 1})",
                param="starting_after",
            )
        frames = [sse(e) for e in events if e["sequence_number"] > after]

        async def stored() -> AsyncIterator[bytes]:
            for frame in frames:
                yield frame

        return _event_stream(stored(), {"X-Request-Id": response_id})
    handle = await service.follow(response_id, after_seq=0, give_up_at=_give_up(service))
    return _followed(service, _follow(renderer, handle, after=after), handle, {"X-Request-Id": response_id})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(
    response_id: str, caller: CallerDep, responses: ResponsesDep, service: ServiceDep
) -> dict[str, Any]:
    """A background response stops (idempotent: an ended one is returned as it is)."""
    view = await responses.find(response_id, caller.user_id)
    if not view.facts.background:
        raise ApiError("only a background response can be cancelled", param="response_id")
    if not view.ended:
        await service.cancel(response_id, "client")
        view = await responses.wait_end(response_id, caller.user_id)
    return view.body()


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, caller: CallerDep, responses: ResponsesDep) -> dict[str, Any]:
    """Forgets the response (`ResponseDirectory.forget`)."""
    await responses.forget(response_id, caller.user_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    caller: CallerDep,
    responses: ResponsesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    """The response's own input items (not those of the responses before it)."""
    view = await responses.find(response_id, caller.user_id)
    items = list(view.facts.input)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise ApiError(f"no input item {after!r} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
