"""The Batch API: a batch of requests from an uploaded JSONL file, run by the batch coordinator
(metrics service, batches.py) through the event log like any other request.

`POST /v1/batches` checks every line here (api/batch_lines.py), stores the prepared lines as one
object and hands the batch to the coordinator, which answers `validating` and owns it from then
on: any edge may die afterwards. Status, counts and the output and error files are read from
the coordinator; the files are rendered from its lines on each read (`batch_file`), so they
hold exactly one line per input line that ran or was refused.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from llmchat_chat.api.batch_lines import LinePreparer, output_line
from llmchat_chat.api.deps import (
    CallerDep,
    ConversationsDep,
    FilesDep,
    HistoryDep,
    LimiterDep,
    ResponsesDep,
    ServiceDep,
)
from llmchat_chat.api.responses import to_response_request
from llmchat_chat.api.responses_schema import ResponsesRequest
from llmchat_chat.backends import ServiceClient
from llmchat_chat.errors import ApiError, NotFound
from llmchat_chat.files import INTERNAL_PURPOSE
from llmchat_chat.webhooks import check_webhook_url
from llmchat_common.batch_contracts import (
    BATCH_ENDPOINTS,
    BatchCreate,
    BatchLinesPage,
    BatchLinesQuery,
    BatchListQuery,
    BatchPage,
    BatchRecord,
    BatchRef,
)
from llmchat_common.contracts import ChatRequested

router = APIRouter(tags=["batches"])

ENDED = ("completed", "failed", "expired", "cancelled")
_MADE_FILE = re.compile(r"^file-(batch_[0-9a-f]{32})-(output|error)$")


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(max_length=128)
    endpoint: str = Field(max_length=64)
    completion_window: str = Field(max_length=16)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = (
        Field(default=None, max_length=16)
    )
    # llmchat's extension: a Standard Webhooks POST of the Batch object when it ends.
    webhook_url: str | None = Field(default=None, max_length=2048)


def lines_object_of(batch_id: str) -> str:
    return f"{batch_id}-lines"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def _int(ts: float | None) -> int | None:
    return None if ts is None else int(ts)


def batch_body(record: BatchRecord) -> dict[str, Any]:
    ended = record.status in ENDED
    errors = [e.model_dump() for e in record.validation_errors]
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": f"file-{record.id}-output" if ended and record.outputs else None,
        "error_file_id": f"file-{record.id}-error" if ended and record.errors else None,
        "created_at": int(record.created_at),
        "in_progress_at": _int(record.in_progress_at),
        "expires_at": int(record.expires_at),
        "finalizing_at": _int(record.finalizing_at),
        "completed_at": _int(record.completed_at),
        "failed_at": _int(record.failed_at),
        "expired_at": _int(record.expired_at),
        "cancelling_at": _int(record.cancelling_at),
        "cancelled_at": _int(record.cancelled_at),
        "request_counts": {"total": record.total, "completed": record.completed, "failed": record.failed},
        "metadata": record.metadata,
    }


async def _batch(history: ServiceClient, user_id: str, batch_id: str) -> BatchRecord:
    try:
        return await history.call("batch_get", BatchRef(user_id=user_id, batch_id=batch_id), BatchRecord)
    except NotFound:
        raise NotFound(f"no batch with id {batch_id!r}", code="batch_not_found", param="batch_id") from None


@router.post("/v1/batches")
async def create_batch(
    body: BatchBody,
    caller: CallerDep,
    service: ServiceDep,
    files: FilesDep,
    history: HistoryDep,
    conversations: ConversationsDep,
    responses: ResponsesDep,
    limiter: LimiterDep,
) -> dict[str, Any]:
    """Lines are paced to the caller's per-minute token budget (the smallest of its limit
    scopes), as the tokens each line's route would reserve; chat the caller sends meanwhile
    is counted apart from it."""
    webhook = None
    if body.webhook_url is not None:
        try:
            webhook = check_webhook_url(body.webhook_url, service.settings.webhooks)
        except ValueError as exc:
            raise ApiError(str(exc), param="webhook_url") from None
    if body.endpoint not in BATCH_ENDPOINTS:
        raise ApiError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}", param="endpoint")
    window = service.settings.batches.windows.get(body.completion_window)
    if window is None:
        allowed = ", ".join(service.settings.batches.windows)
        raise ApiError(f"completion_window must be one of {allowed}", param="completion_window")
    try:
        stored = await files.find(caller.user_id, body.input_file_id)
    except NotFound as exc:
        raise NotFound(exc.message, code=exc.code, param="input_file_id") from None
    if stored.purpose != "batch":
        raise ApiError("the input file's purpose must be `batch`", param="input_file_id")
    raw = await files.read(stored.id)
    numbered = [(n, text) for n, text in enumerate(raw.split(b"\n"), 1) if text.strip()]
    if not numbered:
        raise ApiError("the input file has no lines", param="input_file_id")
    limit = service.settings.batches.max_lines
    if len(numbered) > limit:
        raise ApiError(f"a batch holds at most {limit} lines", param="input_file_id")
    batch_id = new_batch_id()
    now = time.time()

    async def response_request(parsed: ResponsesRequest, request_id: str) -> ChatRequested:
        return await to_response_request(parsed, service, caller, conversations, responses, request_id)

    preparer = LinePreparer(body.endpoint, batch_id, now + window, service, caller, response_request)
    prepared = [await preparer.prepare(n, text) for n, text in numbered]
    lines_object = lines_object_of(batch_id)
    await files.put(
        lines_object,
        caller.user_id,
        INTERNAL_PURPOSE,
        "lines.jsonl",
        b"".join(p.model_dump_json().encode() + b"\n" for p in prepared),
    )
    create = BatchCreate(
        batch_id=batch_id,
        user_id=caller.user_id,
        endpoint=body.endpoint,
        input_file_id=stored.id,
        completion_window=body.completion_window,
        metadata=body.metadata,
        created_at=now,
        expires_at=now + window,
        lines_object=lines_object,
        webhook_url=webhook,
        tokens_per_minute=min(
            scope.limits.tokens_per_minute
            for scope in limiter.scopes(caller.user_id, caller.principal.role, caller.principal.api_key_id)
        ),
    )
    return batch_body(await history.call("batch_create", create, BatchRecord))


@router.get("/v1/batches")
async def list_batches(
    caller: CallerDep,
    history: HistoryDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    page = await history.call(
        "batch_list", BatchListQuery(user_id=caller.user_id, limit=limit, after=after), BatchPage
    )
    data = [batch_body(r) for r in page.data]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


@router.get("/v1/batches/{batch_id}")
async def get_batch(batch_id: str, caller: CallerDep, history: HistoryDep, files: FilesDep) -> dict[str, Any]:
    record = await _batch(history, caller.user_id, batch_id)
    if record.status != "validating":
        # Its prepared lines are in Postgres now: the object that carried them goes (the
        # coordinator may only read the files store).
        await files.drop_internal(lines_object_of(record.id))
    return batch_body(record)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, caller: CallerDep, history: HistoryDep) -> dict[str, Any]:
    """Lines not yet run are skipped, running ones cancelled; the batch is `cancelling` until
    they have stopped, then `cancelled`, its finished lines kept. An ended batch is returned
    as it is."""
    await _batch(history, caller.user_id, batch_id)
    return batch_body(
        await history.call("batch_cancel", BatchRef(user_id=caller.user_id, batch_id=batch_id), BatchRecord)
    )


@dataclass(frozen=True)
class MadeFile:
    """A batch's output or error file, rendered from its lines."""

    history: ServiceClient
    user_id: str
    record: BatchRecord
    which: str

    @property
    def id(self) -> str:
        return f"file-{self.record.id}-{self.which}"

    async def lines(self) -> AsyncIterator[bytes]:
        after = 0
        while True:
            query = BatchLinesQuery(
                user_id=self.user_id,
                batch_id=self.record.id,
                which="output" if self.which == "output" else "error",
                after=after,
            )
            page = await self.history.call("batch_lines", query, BatchLinesPage)
            for line in page.lines:
                yield output_line(self.record.endpoint, line)
            if page.next_after is None:
                return
            after = page.next_after

    async def body(self) -> dict[str, Any]:
        size = 0
        async for line in self.lines():
            size += len(line)
        ended = self.record.completed_at or self.record.cancelled_at or self.record.expired_at
        return {
            "id": self.id,
            "object": "file",
            "bytes": size,
            "created_at": int(ended or self.record.created_at),
            "filename": f"{self.record.id}_{self.which}.jsonl",
            "purpose": "batch_output",
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


async def batch_file(history: ServiceClient, user_id: str, file_id: str) -> MadeFile | None:
    """The batch output or error file `file_id` names (None: not such an id). 404 until the
    batch has ended, or when it has no such file."""
    match = _MADE_FILE.match(file_id)
    if match is None:
        return None
    batch_id, which = match.groups()
    record = await _batch(history, user_id, batch_id)
    made = MadeFile(history, user_id, record, which)
    body = batch_body(record)
    if body["output_file_id" if which == "output" else "error_file_id"] != made.id:
        raise NotFound(f"no file with id {file_id!r}", code="file_not_found", param="file_id")
    return made
