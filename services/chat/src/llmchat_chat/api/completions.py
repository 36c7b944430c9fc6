"""`POST /v1/completions`: OpenAI's legacy completions, through the same pipeline as a chat
completion.

Each prompt is one request of kind `completion` (a raw prompt, no chat template; not stored in
history): checked here, admitted by the model's queue bound and the caller's limits (its prompt
and `n` answers reserved), published with `Nats-Msg-Id` = request id, and followed through the
event log; usage is counted once per request by the metrics projection. A call with several
prompts is several requests (ids `<completion id>-<prompt index>`, all in `X-Request-Id`), as
vLLM runs them, merged into one answer whose choice `index` is `prompt index * n + choice`; if
one fails, the others are cancelled and the call fails. What the worker finds wrong with a prompt
(a token id outside the vocabulary, a prompt longer than the context) comes back as `failed`:
a 400 naming `prompt`, as every refusal made here names its field.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmchat_chat.api.chat import (
    AbandonableStream,
    ClientDisconnected,
    Frame,
    client_left,
    settle,
    sse_frames,
    tagged,
    until_disconnected,
)
from llmchat_chat.api.completions_format import (
    CompletionChunkWriter,
    Echo,
    TextChoiceStream,
    completion_choices,
    completion_object,
)
from llmchat_chat.api.completions_schema import CompletionRequest, Prompt, parse_prompt
from llmchat_chat.api.deps import Caller, CallerDep, LimiterDep, ServiceDep
from llmchat_chat.api.openai_format import choices_of
from llmchat_chat.api.request_checks import check_kind, check_max_tokens, known_model
from llmchat_chat.errors import ApiError, ContextLengthExceeded, error_body
from llmchat_chat.following import Diverged, SeqTracker
from llmchat_chat.ratelimit import Admission, Limiter
from llmchat_chat.service import ChatService, Submitted, terminal_error
from llmchat_chat.settings import LimitSettings
from llmchat_common.contracts import (
    PRIORITY_DEFAULT,
    Cancelled,
    ChatRequested,
    Completed,
    Delta,
    Failed,
    GenerationParams,
    Started,
    Usage,
)
from llmchat_common.logging import bind_log_fields
from llmchat_common.request_log import LoggedEvent
from llmchat_common.telemetry import trace_id_of

router = APIRouter(tags=["completions"])
T = TypeVar("T")


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


async def check_request(body: CompletionRequest, service: ChatService) -> list[Prompt]:
    """Everything that needs more than one field, the model's capabilities or its context; the
    prompts to complete."""
    capabilities = await known_model(service, body.model)
    check_kind(
        body.model,
        capabilities,
        "chat",
        "is an embedding model: it completes no text (use /v1/embeddings)",
    )
    if body.suffix is not None:
        # The request contract carries no suffix and the worker renders no fill-in-the-middle
        # prompt, so even a model whose profile says `fim` cannot be sent one yet.
        reason = (
            "fill-in-the-middle is not served yet"
            if capabilities is not None and capabilities.fim
            else f"the model {body.model!r} cannot fill in the middle"
        )
        raise ApiError(f"suffix is not supported: {reason}", param="suffix")
    n = body.choices()
    if n > 1 and body.temperature == 0:
        # vLLM's rule: greedy sampling gives one answer.
        raise ApiError("n must be 1 with greedy sampling (temperature 0)", param="n")
    if body.best_of is not None and body.best_of != n:
        raise ApiError(
            f"best_of ({body.best_of}) must equal n ({n}): server-side best-of-n is not offered",
            param="best_of",
        )
    max_tokens = body.answer_tokens()
    if body.echo and body.logprobs is not None and max_tokens == 0:
        raise ApiError(
            "echo with logprobs needs max_tokens of at least 1 (the prompt's log probabilities "
            "come with the first generated token)",
            param="max_tokens",
        )
    context = await service.context_of(body.model)
    check_max_tokens(max_tokens, context)
    prompts = parse_prompt(body.prompt, max_chars=service.settings.max_message_chars)
    if context is not None:
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, list) and len(prompt) + max_tokens > context:
                where = f"prompt[{i}]" if len(prompts) > 1 else "prompt"
                raise ContextLengthExceeded(
                    f"{where} ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds this "
                    f"model's context of {context} tokens",
                    param="prompt",
                )
    return prompts


def to_completion_request(
    body: CompletionRequest,
    prompt: Prompt,
    service: ChatService,
    caller: Caller,
    *,
    request_id: str,
    now: float,
) -> ChatRequested:
    return ChatRequested(
        request_id=request_id,
        model=body.model,
        messages=[],
        kind="completion",
        prompt=prompt,
        echo=bool(body.echo),
        params=GenerationParams(
            max_tokens=body.answer_tokens(),
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
            logit_bias=body.logit_bias_ids(),
            # The legacy `logprobs` is vLLM's: how many of the most likely tokens per position.
            logprobs=body.logprobs,
            n=body.choices(),
        ),
        user_id=caller.user_id,
        api_key_id=caller.principal.api_key_id,
        # Not a conversation: history keeps nothing of it.
        conversation_id=None,
        trace_id=trace_id_of(),
        stream=bool(body.stream),
        disconnect=body.disconnect or "cancel",
        source="chat",
        priority=PRIORITY_DEFAULT,
        created_at=now,
        deadline=service.deadline_for(body.timeout, now),
    )


def reservation(request: ChatRequested, limits: LimitSettings) -> int:
    """Tokens held against the per-minute budget until the worker counts them: the prompt (a
    token array's length; a text's estimated from its characters, plus a possible BOS) and the
    most every choice may generate."""
    prompt = request.prompt
    tokens = (
        len(prompt) if isinstance(prompt, list) else math.ceil(len(prompt or "") / limits.chars_per_token) + 1
    )
    return max(1, tokens + (request.params.max_tokens or 0) * request.params.n)


async def admit(service: ChatService, limiter: Limiter, caller: Caller, request: ChatRequested) -> Admission:
    """The model's queue bound, then the caller's rate limits (as a chat completion's,
    `chat.admit`, with the prompt counted from `prompt` instead of messages)."""
    await service.admit(request.model, job=False)
    principal = caller.principal
    return await limiter.admit(
        limiter.scopes(principal.user_id, principal.role, principal.api_key_id),
        request.request_id,
        reservation(request, service.settings.limits),
        hold_until=request.deadline + service.settings.deadline_grace_s,
    )


@dataclass
class Part:
    """One prompt's request, its admission and its events."""

    request: ChatRequested
    admission: Admission
    handle: Submitted
    finished: bool = False
    usage: Usage | None = None

    def finish(self, event: Completed | Failed | Cancelled) -> None:
        settle(self.admission, event)
        self.finished = True
        self.usage = event.usage


async def submit_all(
    service: ChatService, limiter: Limiter, caller: Caller, requests: list[ChatRequested]
) -> list[Part]:
    """Admits every prompt's request, then queues them; all or none (what was queued before a
    failure is cancelled, and charged what it used)."""
    admissions: list[Admission] = []
    parts: list[Part] = []
    try:
        for request in requests:
            admissions.append(await admit(service, limiter, caller, request))
        for request, admission in zip(requests, admissions, strict=True):
            handle = await service.submit(request)
            assert handle is not None
            parts.append(Part(request, admission, handle))
    except BaseException:
        for part in parts:
            service.in_background(service.cancel(part.request.request_id, "client"))
            client_left(service, part.handle, part.admission, limiter)
        for admission in admissions[len(parts) :]:
            admission.used_tokens = 0  # never queued: nothing was used
            await limiter.release(admission)
        raise
    return parts


def completion_error(event: Failed | Cancelled) -> ApiError:
    """The worker's refusals of a completion are about its prompt."""
    error = terminal_error(event)
    if error.param == "messages":
        error.param = "prompt"
    return error


async def all_of(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Every result, or the first failure with the others cancelled (and finished) before it is
    raised: no two readers of one request's events at once."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def first_event(service: ChatService, part: Part) -> LoggedEvent:
    """The event that decides the response's status (`started`, or a terminal: an error)."""
    first = await service.wait_started(part.handle)
    if isinstance(first.event, Failed | Cancelled):
        part.finish(first.event)
        raise completion_error(first.event)
    return first


async def outcome(part: Part, first: LoggedEvent) -> tuple[Started | None, Completed]:
    """The newest attempt's `started` (which carries the echo) and terminal event."""
    event = first.event
    attempt = event.attempt
    started: Started | None = None
    while True:
        if event.attempt >= attempt:
            attempt = event.attempt
            if isinstance(event, Started):
                started = event
            elif isinstance(event, Completed):
                part.finish(event)
                return started, event
            elif isinstance(event, Failed | Cancelled):
                part.finish(event)
                raise completion_error(event)
        event = await part.handle.next_event()


@router.post(
    "/v1/completions",
    responses={
        200: {
            "description": "a `text_completion` object, or with `stream: true` an SSE stream of "
            "`text_completion` chunks ending with `data: [DONE]`",
            "content": {
                "application/json": {},
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
async def create_completion(
    body: CompletionRequest,
    http_request: Request,
    service: ServiceDep,
    caller: CallerDep,
    limiter: LimiterDep,
) -> Response:
    prompts = await check_request(body, service)
    completion_id = new_completion_id()
    bind_log_fields(request_id=completion_id)
    now = time.time()
    requests = [
        to_completion_request(
            body,
            prompt,
            service,
            caller,
            request_id=completion_id if len(prompts) == 1 else f"{completion_id}-{i}",
            now=now,
        )
        for i, prompt in enumerate(prompts)
    ]
    parts = await submit_all(service, limiter, caller, requests)
    request_ids = ", ".join(r.request_id for r in requests)
    headers = {"X-Request-Id": request_ids, **parts[-1].admission.headers}
    created = int(now)
    streaming = False
    try:
        firsts = await until_disconnected(http_request, all_of([first_event(service, p) for p in parts]))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            writer = CompletionChunkWriter(completion_id, body.model, created, include_usage)
            frames = stream_frames(service, limiter, parts, firsts, writer, body)
            streaming = True
            return AbandonableStream(
                sse_frames(frames),
                abandoned=lambda: abandon_all(service, parts, limiter),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        outcomes = await until_disconnected(
            http_request, all_of([outcome(p, f) for p, f in zip(parts, firsts, strict=True)])
        )
    except ApiError as exc:
        exc.headers.setdefault("X-Request-Id", request_ids)
        raise
    except ClientDisconnected:
        return Response(status_code=499)
    finally:
        if not streaming:
            # Before the answer leaves: the caller's next request sees the settled budget.
            await settle_parts(service, parts, limiter)
    n = body.choices()
    choices: list[dict[str, Any]] = []
    for i, (part, (started, completed)) in enumerate(zip(parts, outcomes, strict=True)):
        echo = Echo.of(started, completed) if part.request.echo else None
        choices += completion_choices(
            completed, echo=echo, logprobs=body.logprobs is not None, first_index=i * n
        )
    content = completion_object(completion_id, body.model, created, choices, total_usage(parts))
    return Response(orjson.dumps(content), media_type="application/json", headers=headers)


def total_usage(parts: list[Part]) -> Usage:
    usages = [p.usage or Usage() for p in parts]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
    )


async def settle_parts(service: ChatService, parts: list[Part], limiter: Limiter) -> None:
    """Finished requests free their slots now; the others (a sibling failed, the client left)
    are cancelled as their disconnect policy says and settle once they end."""
    for part in parts:
        if part.finished:
            await limiter.release(part.admission)
            await part.handle.close()
        else:
            client_left(service, part.handle, part.admission, limiter)


def abandon_all(service: ChatService, parts: list[Part], limiter: Limiter) -> None:
    for part in parts:
        if part.finished:
            service.in_background(part.handle.close())
            service.in_background(limiter.release(part.admission))
        else:
            client_left(service, part.handle, part.admission, limiter)


async def stream_frames(
    service: ChatService,
    limiter: Limiter,
    parts: list[Part],
    firsts: list[LoggedEvent],
    writer: CompletionChunkWriter,
    body: CompletionRequest,
) -> AsyncIterator[Frame]:
    """The chunks of every prompt's request, then the usage (if asked) and `[DONE]`; an error
    (a failed request, a lost worker, the deadline) ends the stream with an error object."""
    n = body.choices()
    single = len(parts) == 1
    sources = [
        part_frames(
            part,
            first,
            [
                TextChoiceStream(writer, i * n + c, echo=bool(body.echo), logprobs=body.logprobs is not None)
                for c in range(n)
            ],
            ids=single,
        )
        for i, (part, first) in enumerate(zip(parts, firsts, strict=True))
    ]
    try:
        try:
            async for frame in sources[0] if single else merged(sources):
                yield frame
        except ApiError as exc:
            yield None, orjson.dumps(error_body(exc)).decode()
        else:
            if writer.include_usage:
                yield None, writer.usage(total_usage(parts))
        yield None, "[DONE]"
    finally:
        abandon_all(service, parts, limiter)


async def part_frames(
    part: Part, first: LoggedEvent, streams: list[TextChoiceStream], *, ids: bool
) -> AsyncIterator[Frame]:
    """One request's chunks, with its events' stream sequences as SSE ids when it is the only
    one (a client resumes at /v1/jobs/{id}/events after them)."""
    logged = first
    gaps = SeqTracker()
    while True:
        event = logged.event
        seq = logged.stream_seq if ids else None
        if all([stream.current(event) for stream in streams]):
            if gaps.hole(event):
                # Which choice lost text is unknown: all hold until the terminal event.
                for stream in streams:
                    stream.holed = True
            if isinstance(event, Delta) and event.index < len(streams):
                try:
                    chunks = streams[event.index].delta(event)
                except Diverged:
                    raise ApiError(
                        "the worker serving this answer was lost; retry", code="worker_lost"
                    ) from None
                for frame in tagged(seq, chunks):
                    yield frame
            elif isinstance(event, Completed):
                part.finish(event)
                try:
                    ends = [
                        streams[choice.index].finish(choice, event)
                        for choice in choices_of(event)
                        if choice.index < len(streams)
                    ]
                except Diverged:
                    raise ApiError(
                        "the streamed answer differs from the stored one; retry", code="worker_lost"
                    ) from None
                for frame in tagged(seq, [chunk for chunks in ends for chunk in chunks]):
                    yield frame
                return
            elif isinstance(event, Failed | Cancelled):
                part.finish(event)
                raise completion_error(event)
        next_logged = await part.handle.next()
        assert next_logged is not None
        logged = next_logged


async def merged(sources: list[AsyncIterator[Frame]]) -> AsyncIterator[Frame]:
    """The frames of several requests as they come; the first error ends them all."""
    queue: asyncio.Queue[tuple[Frame | None, BaseException | None]] = asyncio.Queue()

    async def pump(source: AsyncIterator[Frame]) -> None:
        try:
            async for frame in source:
                queue.put_nowait((frame, None))
            queue.put_nowait((None, None))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait((None, exc))

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    try:
        live = len(tasks)
        while live:
            frame, error = await queue.get()
            if error is not None:
                raise error
            if frame is None:
                live -= 1
                continue
            yield frame
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
