"""The job object of the jobs API and of completion webhooks, built from the event log.

A job's status follows its events: no event yet → `queued`; `started` → `running`; the terminal
event decides the rest. A request stopped at its deadline ends `cancelled` in the log (reason
`deadline`); to its owner that is a `failed` job with the error code `deadline_exceeded`.
"""

from __future__ import annotations

from typing import Any, Literal

from llmchat_chat.api.completions_format import Echo, completion_choices, completion_object
from llmchat_chat.api.openai_format import completion_body, usage_body
from llmchat_common.contracts import Cancelled, Completed, Failed, Started

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "completed", "failed", "cancelled")
Terminal = Completed | Failed | Cancelled


def status_of(started: Started | None, terminal: Terminal | None) -> JobStatus:
    if terminal is None:
        return "queued" if started is None else "running"
    if isinstance(terminal, Completed):
        return "completed"
    if isinstance(terminal, Cancelled) and terminal.reason != "deadline":
        return "cancelled"
    return "failed"


def error_of(terminal: Terminal | None) -> dict[str, str] | None:
    if isinstance(terminal, Failed):
        return {"code": terminal.code, "message": terminal.message}
    if isinstance(terminal, Cancelled):
        if terminal.reason == "deadline":
            return {"code": "deadline_exceeded", "message": "the request was stopped at its deadline"}
        return {"code": "cancelled", "message": f"the request was cancelled ({terminal.reason})"}
    return None


def job_links(request_id: str) -> dict[str, str]:
    return {"self": f"/v1/jobs/{request_id}", "events": f"/v1/jobs/{request_id}/events"}


def job_body(
    request_id: str,
    *,
    model: str | None,
    conversation_id: str | None,
    created_at: float | None,
    started: Started | None,
    terminal: Terminal | None,
    attempts: int | None = None,
) -> dict[str, Any]:
    """One job as its owner sees it; `result` is the OpenAI `chat.completion` once completed
    (a failed or cancelled job keeps its partial text in `partial_text`)."""
    facts = terminal or started  # both carry the request's facts
    model = model or (facts.model if facts else None)
    conversation_id = conversation_id or (facts.conversation_id if facts else None)
    created_at = created_at or (facts.created_at if facts else None)
    started_at = None
    if started is not None:
        started_at = started.ts
    elif terminal is not None and terminal.timings.ttft_ms is not None and terminal.created_at:
        started_at = terminal.created_at + terminal.timings.queue_ms / 1000.0
    last_attempt = max(attempts or 0, terminal.attempt if terminal else 0, started.attempt if started else 0)
    body: dict[str, Any] = {
        "id": request_id,
        "object": "job",
        "status": status_of(started, terminal),
        "model": model,
        "conversation_id": conversation_id,
        "created_at": created_at,
        "started_at": started_at,
        "finished_at": terminal.ts if terminal else None,
        "attempts": last_attempt,
        "usage": usage_body(terminal.usage) if terminal else None,
        "result": None,
        "error": error_of(terminal),
        "links": job_links(request_id),
    }
    if isinstance(terminal, Completed) and terminal.kind == "completion":
        # A legacy completion: its `text_completion` (a call with several prompts is a job each).
        echo = Echo.of(started, terminal) if terminal.echo_text is not None else None
        choices = completion_choices(terminal, echo=echo, logprobs=terminal.logprobs is not None)
        body["result"] = completion_object(
            request_id, model or "", int(created_at or terminal.ts), choices, terminal.usage
        )
    elif isinstance(terminal, Completed):
        body["result"] = completion_body(
            request_id, model or "", int(created_at or terminal.ts), terminal, conversation_id or ""
        )
    elif terminal is not None:
        body["partial_text"] = terminal.text
    return body
