"""Events → rows, without the database: what one batch of the log asks the projection to write.

Every row is a merge that does not care about order or repetition (DESIGN.md §3): a
conversation takes the earliest request's title and system prompt, the latest event's time and
model; a message is keyed by (request_id, role) and keeps the earliest log position that
carried it. So a terminal event before its `started`, a redelivered batch or a whole replay all
give the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from llmchat_common.contracts import Cancelled, Completed, Failed, Started
from llmchat_common.projection import ProjectedEvent, StoredEvent
from llmchat_history.titles import clean_title, fallback_title

log = logging.getLogger(__name__)


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
    # Keyed by (request_id, role); each row knows its (conversation_id, user_id).
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    titles: list[TitleAnswer] = field(default_factory=list)

    def messages_of(
        self, accepted: set[tuple[str, str]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(user rows, assistant rows) of the conversations whose owner matched."""
        users: list[dict[str, Any]] = []
        answers: list[dict[str, Any]] = []
        for row in self.messages.values():
            if (row["conversation_id"], row["user_id"]) in accepted:
                (users if row["role"] == "user" else answers).append(row)
        return users, answers


Projected = Started | Completed | Failed | Cancelled


def _request_time(event: Projected) -> datetime:
    return to_datetime(event.created_at if event.created_at is not None else event.ts)


def user_row(event: Projected, seq: int) -> dict[str, Any] | None:
    if event.user_message is None or event.conversation_id is None or event.user_id is None:
        return None
    return {
        "request_id": event.request_id,
        "role": "user",
        "conversation_id": event.conversation_id,
        "user_id": event.user_id,
        "content": event.user_message,
        "status": "completed",
        "model": event.model,
        "finish_reason": None,
        "error": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "trace_id": event.trace_id,
        "created_at": _request_time(event),
        "stream_seq": seq,
    }


def answer_row(event: Completed | Failed | Cancelled, seq: int) -> dict[str, Any] | None:
    if event.conversation_id is None or event.user_id is None:
        return None
    error: str | None = None
    finish_reason: str | None = None
    if isinstance(event, Completed):
        finish_reason = event.finish_reason
    elif isinstance(event, Failed):
        error = event.code
    else:
        error = event.reason
    return {
        "request_id": event.request_id,
        "role": "assistant",
        "conversation_id": event.conversation_id,
        "user_id": event.user_id,
        "content": event.text,
        "status": event.type,
        "model": event.model,
        "finish_reason": finish_reason,
        "error": error,
        "prompt_tokens": event.usage.prompt_tokens,
        "completion_tokens": event.usage.completion_tokens,
        "trace_id": event.trace_id,
        "created_at": _request_time(event),
        "stream_seq": seq,
    }


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


_TEXT_FIELDS = ("text", "user_message", "system_prompt")


def storable(event: ProjectedEvent) -> ProjectedEvent:
    """Postgres text cannot hold NUL characters, which a model may well generate: they are
    stored as U+FFFD (the log keeps the exact text)."""
    changed = {
        name: value.replace("\x00", "\ufffd")
        for name in _TEXT_FIELDS
        if isinstance(value := getattr(event, name, None), str) and "\x00" in value
    }
    return event.model_copy(update=changed) if changed else event


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
        key = (event.conversation_id, event.user_id)
        groups[key] = _merge_conversation(groups.get(key), event, seq)
        rows = [user_row(event, seq)]
        if not isinstance(event, Started):
            rows.append(answer_row(event, seq))
        for row in rows:
            if row is None:
                continue
            mkey = (row["request_id"], row["role"])
            previous = plan.messages.get(mkey)
            # One row per key in a statement (ON CONFLICT may not touch a row twice); the
            # earliest log position wins, as the upsert's merge does.
            if previous is None or row["stream_seq"] < previous["stream_seq"]:
                plan.messages[mkey] = row
    plan.conversations = sorted(groups.values(), key=lambda c: c.first_seq)
    return plan
