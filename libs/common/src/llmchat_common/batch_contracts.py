"""Batches between the edge and the batch coordinator (in the metrics service, `usage.v1.rpc.batch_*`).

The edge validates a batch's input file line by line with the same checks as the endpoint's own
route and turns each valid line into the `ChatRequested` it would publish; the lines (valid or
not) go into one object of the files store (`PreparedLine` per JSONL line), and `batch_create`
names it. From there the coordinator owns the batch: it stores the lines in Postgres, publishes
them to the log a few at a time, follows their terminal events and ends the batch. The edge
renders the output and error files from the lines (`batch_lines`): the protocol stays at the edge.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmchat_common.contracts import ChatRequested
from llmchat_common.history_contracts import DbText

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
# A line's state: `pending` (not yet published), `running` (published, no terminal event yet),
# the terminal outcome (`completed`, `failed`, `cancelled`), `invalid` (refused when validated)
# or `skipped` (never published: the batch was cancelled or expired first).
LineStatus = Literal["pending", "running", "completed", "failed", "cancelled", "invalid", "skipped"]
MAX_BATCH_PAGE = 100


def batch_request_id(batch_id: str, line: int) -> str:
    """A line's request id: stable, so a line published twice is one message (`Nats-Msg-Id`)."""
    return f"{batch_id}-{line}"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class LineError(_Out):
    code: str
    message: str
    param: str | None = None
    # 1-based line of the input file.
    line: int | None = None


class PreparedLine(_Out):
    """One line of the input file as the edge validated it: a request, or why not."""

    line: int
    custom_id: str | None = None
    body: dict[str, Any] | None = None
    request: ChatRequested | None = None
    error: LineError | None = None
    # The tokens the line is charged against its owner's per-minute budget (as its route
    # would reserve them: the prompt, estimated, and the most the answer may take).
    tokens: int = 0


class BatchCreate(_Body):
    batch_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    endpoint: str
    input_file_id: str = Field(max_length=128)
    completion_window: str = "24h"
    metadata: dict[DbText, DbText] | None = None
    created_at: float
    expires_at: float
    # The object (files store) holding the `PreparedLine`s as JSONL.
    lines_object: str = Field(max_length=256)
    # Checked by the edge: where the batch-ended webhook goes.
    webhook_url: str | None = Field(default=None, max_length=2048)
    # The owner's per-minute token budget (the smallest of its limit scopes): the coordinator
    # publishes the batch's lines no faster (None: unpaced).
    tokens_per_minute: int | None = Field(default=None, ge=1)


class BatchRef(_Body):
    user_id: DbText = Field(min_length=1, max_length=128)
    batch_id: DbText = Field(min_length=1, max_length=128)


class BatchListQuery(_Body):
    """Newest first; `after` is the id of the last batch of the page before."""

    user_id: DbText = Field(min_length=1, max_length=128)
    limit: int = Field(default=20, ge=1, le=MAX_BATCH_PAGE)
    after: DbText | None = Field(default=None, max_length=128)


class BatchRecord(_Out):
    """A batch as the coordinator has it. Times are Unix epoch seconds."""

    id: str
    user_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: float
    expires_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    # Lines with an output line (completed) and with an error line (invalid, failed, cancelled,
    # skipped): whether the batch has an output and an error file.
    outputs: int = 0
    errors: int = 0
    metadata: dict[str, str] | None = None
    # A batch whose every line was refused: the first refusals.
    validation_errors: list[LineError] = Field(default_factory=list)


class BatchPage(_Out):
    data: list[BatchRecord]
    has_more: bool = False


class BatchLinesQuery(_Body):
    """The lines of the output (`which="output"`) or error file, in line order, after `after`."""

    user_id: DbText = Field(min_length=1, max_length=128)
    batch_id: DbText = Field(min_length=1, max_length=128)
    which: Literal["output", "error"]
    after: int = Field(default=0, ge=0)
    limit: int = Field(default=200, ge=1, le=1000)


class BatchLine(_Out):
    line: int
    custom_id: str | None = None
    request_id: str
    status: LineStatus
    body: dict[str, Any] | None = None
    request: ChatRequested | None = None
    # The newest attempt's terminal event (JSON), once in.
    terminal: dict[str, Any] | None = None
    error: LineError | None = None


class BatchLinesPage(_Out):
    lines: list[BatchLine]
    # The `after` of the next page; None on the last one.
    next_after: int | None = None


class BatchEnded(_Out):
    """On `notice.v1.batch.<id>` (`Nats-Msg-Id` = `<id>-ended`) when a batch with a webhook ends:
    the edges' webhook dispatcher POSTs the batch to `webhook_url`, signed for its owner."""

    batch: BatchRecord
    webhook_url: str
    ts: float
