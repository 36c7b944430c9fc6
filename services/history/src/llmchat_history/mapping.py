"""Events → rows, without the database: what one batch of the log asks the projection to write.

Every row is a merge that does not care about order or repetition (DESIGN.md §3): a
conversation takes the earliest request's title and system prompt, the latest event's time and
model; a message is keyed by (request_id, role, position) and keeps the earliest log position
that carried it. So a terminal event before its `started`, a redelivered batch or a whole replay
all give the same rows.

A request gives at most: its user message (position 0), the tool results the client sent with
it (role `tool`, positions 0.. in the order of the request), and its answer (position 0). Both
`started` and the terminal event carry the first two (the request's facts); only the terminal
event carries the answer. Only `chat` and `response` requests with a conversation are stored: a title answer
renames its conversation, and `completion` and `embedding` requests belong to none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from llmchat_common.contracts import CONVERSATION_KINDS, Cancelled, Completed, Failed, Started
from llmchat_common.projection import ProjectedEvent, StoredEvent
from llmchat_history.titles import clean_title, fallback_title

log = logging.getLogger(__name__)

# (request_id, role, position): the primary key of a message.
MessageKey = tuple[str, str, int]


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class ConversationUpsert:
    """One conversation's share of a batch (per conversation id and claimed owner)."""

    id: str
    user_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    system_prompt: str | None
    model: str | None
    first_seq: int

    def values(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "title": self.title,
            "title_source": "fallback",
            # A fallback title is as old as the request it comes from: an earlier request's
            # first words replace a later one's when the log is read out of order.
            "title_at": self.created_at,
            "system_prompt": self.system_prompt,
            "model": self.model,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class TitleAnswer:
    conversation_id: str
    user_id: str
    title: str
    at: datetime


@dataclass
class BatchPlan:
    conversations: list[ConversationUpsert] = field(default_factory=list)
    # Each row knows its (conversation_id, user_id).
    messages: dict[MessageKey, dict[str, Any]] = field(default_factory=dict)
    titles: list[TitleAnswer] = field(default_factory=list)
    # Stored responses, by request id (the newest attempt's terminal event).
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def messages_of(
        self, accepted: set[tuple[str, str]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the requests' own messages: user and tool rows, assistant rows) of the
        conversations whose owner matched."""
        inputs: list[dict[str, Any]] = []
        answers: list[dict[str, Any]] = []
        for row in self.messages.values():
            if (row["conversation_id"], row["user_id"]) in accepted:
                (answers if row["role"] == "assistant" else inputs).append(row)
        return inputs, answers


Projected = Started | Completed | Failed | Cancelled


def _request_time(event: Projected) -> datetime:
    return to_datetime(event.created_at if event.created_at is not None else event.ts)


def _row(event: Projected, seq: int, role: str, content: str, **fields: Any) -> dict[str, Any]:
    """A message row with every column set (one insert statement takes many rows of one shape)."""
    return {
        "request_id": event.request_id,
        "role": role,
        "position": 0,
        "conversation_id": event.conversation_id,
        "user_id": event.user_id,
        "content": content,
        "status": "completed",
        "model": event.model,
        "finish_reason": None,
        "error": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "tool_call_id": None,
        "tool_calls": None,
        "trace_id": event.trace_id,
        # The request's created_at for every row of a request: a conversation reads in request
        # order, and within a request by role and position (repository.conversation_messages).
        "created_at": _request_time(event),
        "stream_seq": seq,
        **fields,
    }


def input_rows(event: Projected, seq: int) -> list[dict[str, Any]]:
    """The request's own messages: the user's turn, or the tool results of a tool turn."""
    if event.conversation_id is None or event.user_id is None:
        return []
    rows = [
        _row(event, seq, "tool", result.content, position=i, tool_call_id=result.tool_call_id)
        for i, result in enumerate(event.tool_results)
    ]
    if event.user_message is not None:
        rows.insert(0, _row(event, seq, "user", event.user_message))
    return rows


def answer_row(event: Completed | Failed | Cancelled, seq: int) -> dict[str, Any] | None:
    if event.conversation_id is None or event.user_id is None:
        return None
    fields: dict[str, Any] = {
        "status": event.type,
        "prompt_tokens": event.usage.prompt_tokens,
        "completion_tokens": event.usage.completion_tokens,
    }
    content = event.text
    if isinstance(event, Completed):
        # Choice 0 (the event's own fields; `choices` repeats it when n > 1): the answer without
        # its tool-call markup, "" when it only calls tools (the API shows that as null).
        content = event.visible_content() or ""
        fields["finish_reason"] = event.finish_reason
        if event.tool_calls:
            fields["tool_calls"] = [call.model_dump(mode="json") for call in event.tool_calls]
    elif isinstance(event, Failed):
        fields["error"] = event.code
    else:
        fields["error"] = event.reason
    return _row(event, seq, "assistant", content, **fields)


def _merge_conversation(current: ConversationUpsert | None, event: Projected, seq: int) -> ConversationUpsert:
    assert event.conversation_id is not None and event.user_id is not None
    created = _request_time(event)
    at = to_datetime(event.ts)
    candidate = ConversationUpsert(
        id=event.conversation_id,
        user_id=event.user_id,
        title=fallback_title(event.user_message),
        created_at=created,
        updated_at=at,
        system_prompt=event.system_prompt,
        model=event.model,
        first_seq=seq,
    )
    if current is None:
        return candidate
    # The same merge the upsert does in SQL: earliest request names it, latest event dates it.
    if candidate.created_at < current.created_at:
        current.title, current.system_prompt = candidate.title, candidate.system_prompt
        current.created_at = candidate.created_at
    if candidate.updated_at >= current.updated_at:
        current.updated_at = candidate.updated_at
        current.model = candidate.model or current.model
    current.first_seq = min(current.first_seq, seq)
    return current


_TEXT_FIELDS = ("text", "content", "user_message", "system_prompt")
_NESTED_FIELDS = ("tool_results", "tool_calls")
_NUL = "\x00"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return _NUL in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    return False


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, "\ufffd")
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_nul(v) for k, v in value.items()}
    return value


def storable(event: ProjectedEvent) -> ProjectedEvent:
    """Postgres text (and JSONB) cannot hold NUL characters, which a model may well generate
    and a client may send in a tool result: they are stored as U+FFFD (the log keeps the
    exact text)."""
    changed: dict[str, Any] = {
        name: _without_nul(value)
        for name in _TEXT_FIELDS
        if isinstance(value := getattr(event, name, None), str) and _NUL in value
    }
    for name in _NESTED_FIELDS:
        items: list[BaseModel] = getattr(event, name, None) or []
        if any(_has_nul(item.model_dump()) for item in items):
            changed[name] = [type(item).model_validate(_without_nul(item.model_dump())) for item in items]
    return event.model_copy(update=changed) if changed else event


def response_row(event: Completed | Failed | Cancelled, seq: int) -> dict[str, Any]:
    return {
        "request_id": event.request_id,
        "user_id": event.user_id,
        "conversation_id": event.conversation_id,
        "attempt": event.attempt,
        "terminal": _without_nul(event.model_dump(mode="json")),
        "created_at": _request_time(event),
        "stream_seq": seq,
    }


def plan_batch(events: Sequence[StoredEvent]) -> BatchPlan:
    plan = BatchPlan()
    groups: dict[tuple[str, str], ConversationUpsert] = {}
    for stored in sorted(events, key=lambda e: e.stream_seq):
        event, seq = storable(stored.event), stored.stream_seq
        if event.conversation_id is None:
            continue  # not part of a conversation (old clients, direct NATS callers)
        if event.user_id is None:
            log.warning("event without a user skipped", extra={"request_id": event.request_id})
            continue
        if event.kind == "title":
            if isinstance(event, Completed):
                title = clean_title(event.text)
                if title is not None:
                    plan.titles.append(
                        TitleAnswer(event.conversation_id, event.user_id, title, to_datetime(event.ts))
                    )
            continue  # a title request is never a message; a failed one leaves the fallback
        if event.kind not in CONVERSATION_KINDS:
            continue  # legacy completions and embeddings are not turns of a conversation
        key = (event.conversation_id, event.user_id)
        groups[key] = _merge_conversation(groups.get(key), event, seq)
        rows = input_rows(event, seq)
        if not isinstance(event, Started):
            rows += [row] if (row := answer_row(event, seq)) is not None else []
            if event.response is not None and event.response.store:
                stored_response = response_row(event, seq)
                earlier = plan.responses.get(event.request_id)
                if earlier is None or earlier["attempt"] < stored_response["attempt"]:
                    plan.responses[event.request_id] = stored_response
        for row in rows:
            mkey: MessageKey = (row["request_id"], row["role"], row["position"])
            previous = plan.messages.get(mkey)
            # One row per key in a statement (ON CONFLICT may not touch a row twice); the
            # earliest log position wins, as the upsert's merge does.
            if previous is None or row["stream_seq"] < previous["stream_seq"]:
                plan.messages[mkey] = row
    plan.conversations = sorted(groups.values(), key=lambda c: c.first_seq)
    return plan
