"""The jobs API: every request is a job; `POST /v1/jobs` queues one nobody watches live.

Status and result come from the event log; `/v1/jobs/{id}/events` streams a request's events
(stored, then live) as SSE with the stream sequence as each event's `id`, so a client that
lost its connection resumes with `Last-Event-ID` at any edge. Streamed chat completions carry
the same ids, so their clients resume here too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from llmchat_chat.api.chat import admit, conversation_for, to_request
from llmchat_chat.api.deps import CallerDep, ConversationsDep, JobsDep, LimiterDep, ServiceDep, UsageDep
from llmchat_chat.api.job_format import JobStatus, job_body, job_links
from llmchat_chat.api.schemas import ChatCompletionRequest
from llmchat_chat.errors import ApiError, Conflict, InvalidRequest, NotFound, error_body
from llmchat_chat.jobs import Job, fingerprint, new_job_id
from llmchat_chat.webhooks import check_webhook_url, secret_for
from llmchat_common.contracts import is_terminal
from llmchat_common.usage_contracts import JobListQuery, JobPage, JobRecord

router = APIRouter(tags=["jobs"])

SSE_CONTENT = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "properties": {"id": {"type": "string"}, "event": {"type": "string"}, "data": {"type": "string"}},
            "required": ["data"],
        }
    }
}


class JobRequest(ChatCompletionRequest):
    """A chat-completion body; `stream` is ignored (watch `/v1/jobs/{id}/events` instead)."""

    webhook_url: str | None = Field(default=None, max_length=2048)


def body_fingerprint(body: JobRequest) -> str:
    """What makes two submissions with one Idempotency-Key the same: the fields the caller set,
    as parsed (so `0` and `0.0` are one value)."""
    return fingerprint(body.model_dump(mode="json", exclude_unset=True))


def view(job: Job) -> dict[str, Any]:
    body = _view(job)
    if job.cancelled_while_queued:
        body["status"] = "cancelled"
        body["error"] = {"code": "cancelled", "message": "the job was cancelled before it started"}
    return body


def _view(job: Job) -> dict[str, Any]:
    if job.state.started is not None or job.state.terminal is not None:
        return job_body(
            job.request_id,
            model=None,
            conversation_id=None,
            created_at=None,
            started=job.state.started,
            terminal=job.state.terminal,
        )
    if job.pending is not None:
        return job_body(
            job.request_id,
            model=job.pending.model,
            conversation_id=job.pending.conversation_id,
            created_at=job.pending.created_at,
            started=None,
            terminal=None,
        )
    assert job.record is not None
    return record_view(job.record)


def record_view(record: JobRecord) -> dict[str, Any]:
    """A job as the metrics projection knows it (the list; jobs whose events have expired)."""
    done = record.status in ("completed", "failed", "cancelled")
    return {
        "id": record.request_id,
        "object": "job",
        "status": record.status,
        "model": record.model,
        "conversation_id": record.conversation_id,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "attempts": record.attempts,
        "usage": {
            "prompt_tokens": record.prompt_tokens or 0,
            "completion_tokens": record.completion_tokens or 0,
            "total_tokens": (record.prompt_tokens or 0) + (record.completion_tokens or 0),
        }
        if done
        else None,
        "error": {"code": record.error_code, "message": record.error_message or ""}
        if record.error_code
        else None,
        "links": job_links(record.request_id),
    }


@router.post(
    "/v1/jobs",
    status_code=202,
    responses={
        200: {"description": "an `Idempotency-Key` replay: the job it already names"},
        202: {"description": "the queued job, with links to its status and events"},
        409: {"description": "the `Idempotency-Key` was used with another body"},
    },
)
async def create_job(
    body: JobRequest,
    http_request: Request,
    service: ServiceDep,
    caller: CallerDep,
    limiter: LimiterDep,
    conversations: ConversationsDep,
    jobs: JobsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    webhook = None
    if body.webhook_url is not None:
        try:
            webhook = check_webhook_url(body.webhook_url, service.settings.webhooks)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="webhook_url") from None
    conversation = await conversation_for(body, caller, conversations)
    request = await to_request(
        body,
        service,
        caller,
        conversation=conversation,
        source="job",
        webhook_url=webhook,
        request_id=new_job_id(),
    )
    if idempotency_key is not None:
        held = await jobs.claim(caller.user_id, idempotency_key, body_fingerprint(body), request)
        if held is not None:
            try:
                job = await jobs.find(held.request_id, caller.user_id)
            except NotFound:
                # The first submission has not queued it (yet, or ever: its edge died). Queue
                # it now; its id is its message id, so JetStream drops a second copy.
                await service.submit(held, follow=False)
                await jobs.remember(held)
                job = await jobs.find(held.request_id, caller.user_id)
            return JSONResponse(view(job), status_code=200, headers={"Idempotent-Replayed": "true"})
    try:
        admission = await admit(service, limiter, caller, request)
        try:
            await service.submit(request, follow=False)
        except BaseException:
            admission.used_tokens = 0  # never queued: nothing was used
            raise
        finally:
            # A job holds no concurrency slot while it waits or runs (jobs may queue deep); its
            # tokens stay charged at the reservation.
            await limiter.release(admission)
    except BaseException:
        if idempotency_key is not None:
            await jobs.unclaim(caller.user_id, idempotency_key)
        raise
    await jobs.remember(request)
    queued = job_body(
        request.request_id,
        model=request.model,
        conversation_id=request.conversation_id,
        created_at=request.created_at,
        started=None,
        terminal=None,
    )
    return JSONResponse(
        queued,
        status_code=202,
        headers={"Location": f"/v1/jobs/{request.request_id}", "X-Request-Id": request.request_id},
    )


@router.get("/v1/jobs")
async def list_jobs(
    caller: CallerDep,
    usage: UsageDep,
    status: Annotated[
        list[JobStatus] | None, Query(description="repeatable: only jobs in these states")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=512, description="the `next_cursor` of the page before")
    ] = None,
) -> dict[str, Any]:
    query = JobListQuery(user_id=caller.user_id, status=status, limit=limit, cursor=after)
    page = await usage.call("job_list", query, JobPage)
    return {
        "object": "list",
        "data": [record_view(r) for r in page.data],
        "next_cursor": page.next_cursor,
        "has_more": page.next_cursor is not None,
    }


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, caller: CallerDep, jobs: JobsDep) -> dict[str, Any]:
    return view(await jobs.find(job_id, caller.user_id))


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    responses={409: {"description": "the job has already ended"}},
)
async def cancel_job(job_id: str, caller: CallerDep, jobs: JobsDep, service: ServiceDep) -> JSONResponse:
    """A queued job never runs; a running one is stopped (its engine slot freed) and ends
    `cancelled` with its partial usage."""
    job = await jobs.find(job_id, caller.user_id)
    body = view(job)
    if body["status"] not in ("queued", "running"):
        raise Conflict(f"the job has already ended ({body['status']})", code="job_finished")
    await service.cancel(job_id, "client")
    return JSONResponse({**body, "cancel_requested": True}, status_code=202)


def _after(last_event_id: str | None, after: int | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    try:
        value = int(last_event_id)
    except ValueError:
        raise InvalidRequest(
            "Last-Event-ID must be an event id of this stream", param="Last-Event-ID"
        ) from None
    if value < 0:
        raise InvalidRequest("Last-Event-ID must be an event id of this stream", param="Last-Event-ID")
    return value


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={200: {"description": "the request's events as SSE", "content": SSE_CONTENT}},
)
async def job_events(
    job_id: str,
    caller: CallerDep,
    jobs: JobsDep,
    service: ServiceDep,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    after: Annotated[int | None, Query(ge=0, description="like `Last-Event-ID`")] = None,
) -> StreamingResponse:
    """Every event of the request after `Last-Event-ID` (all without it): `started`, `delta`,
    `reset` (drop the text so far: the answer starts over) and one terminal event, then the
    stream ends. Watching never cancels the request."""
    job = await jobs.find(job_id, caller.user_id)
    start = _after(last_event_id, after)
    settings = service.settings
    ended = job.state.terminal is not None and start >= job.state.terminal_seq
    # A job the projection knows as ended whose events the log no longer keeps: nothing to send.
    expired = (
        job.state.terminal is None
        and job.record is not None
        and job.record.status not in ("queued", "running")
    )
    if ended or expired:
        handle = None
    else:
        handle = await service.follow(
            job_id,
            after_seq=start,
            give_up_at=time.time() + settings.max_timeout_s + settings.deadline_grace_s,
        )

    async def frames() -> AsyncIterator[bytes]:
        if handle is None:
            return
        # Events of attempts older than the newest one known are history, not the end.
        attempt = job.state.started.attempt if job.state.started is not None else 0
        try:
            while True:
                try:
                    logged = await handle.next(idle_s=settings.jobs.keepalive_s)
                except ApiError as exc:
                    yield b"event: error\ndata: " + error_json(exc) + b"\n\n"
                    return
                if logged is None:
                    yield b": keep-alive\n\n"
                    continue
                event = logged.event
                attempt = max(attempt, event.attempt)
                yield (
                    f"id: {logged.stream_seq}\nevent: {event.type}\ndata: ".encode()
                    + event.model_dump_json().encode()
                    + b"\n\n"
                )
                if is_terminal(event) and event.attempt >= attempt:
                    return
        finally:
            await handle.close()

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Request-Id": job_id},
    )


def error_json(exc: ApiError) -> bytes:
    return orjson.dumps(error_body(exc))


@router.get("/v1/webhooks/secret")
async def webhook_secret(caller: CallerDep, service: ServiceDep) -> dict[str, str]:
    """The caller's key for verifying job webhooks (docs/webhooks.md); the same on every call."""
    settings = service.settings.webhooks
    if settings.secret is None:
        raise ApiError("webhooks are not enabled on this server", code="webhooks_disabled")
    return {"object": "webhook_secret", "secret": secret_for(caller.user_id, settings)}
