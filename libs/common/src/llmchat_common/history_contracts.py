"""Request-reply bodies between the edge and the history service (`history.v1.rpc.<op>`).

Every request names the caller (`user_id`, from the edge's authentication, never from the
client): the service answers only about that user's conversations, and a missing id and
another user's id give the same `not_found`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from llmchat_common.contracts import ToolCall

# `tool`: a tool result the client sent (OpenAI's tool message), answering one of the calls of
# the assistant message before it.
MessageRole = Literal["user", "assistant", "tool"]
# An assistant answer keeps how its request ended; a user message is always `completed`.
MessageStatus = Literal["completed", "failed", "cancelled"]
# Precedence of a title: a user's rename beats the model's title, which beats the first words.
TitleSource = Literal["fallback", "model", "user"]
ExportFormat = Literal["json", "markdown"]

MAX_PAGE = 100
MAX_TITLE_CHARS = 200


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL: refused here, as the caller's mistake, not a 5xx later.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# A caller's text that reaches the database.
DbText = Annotated[str, AfterValidator(_no_nul)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ListConversations(_Body):
    user_id: str
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)
    # Opaque, from the previous page's `next_cursor`.
    cursor: DbText | None = Field(default=None, max_length=200)
    # Full-text search over titles and messages (websearch syntax: words, "phrases", -not).
    q: DbText | None = Field(default=None, max_length=500)


class ConversationRef(_Body):
    user_id: str
    conversation_id: str


class RenameConversation(_Body):
    user_id: str
    conversation_id: str
    title: DbText = Field(min_length=1, max_length=MAX_TITLE_CHARS)


class ExportConversation(_Body):
    user_id: str
    conversation_id: str
    format: ExportFormat = "json"


class MessageUsage(_Out):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Message(_Out):
    """A stored message, in OpenAI's shape where it has one (`role`, `content`, `tool_calls`,
    `tool_call_id`). A conversation reads user → assistant (calling tools) → tool results →
    assistant: each request's own messages come before its answer."""

    request_id: str
    role: MessageRole
    # None: an assistant message that only calls tools (OpenAI's `content: null`).
    content: str | None
    # An assistant message's calls (None: it made none, as OpenAI leaves it out).
    tool_calls: list[ToolCall] | None = None
    # A tool result: the call it answers.
    tool_call_id: str | None = None
    status: MessageStatus = "completed"
    model: str | None = None
    finish_reason: str | None = None
    # Failed/cancelled answers: why (error code or cancel reason).
    error: str | None = None
    usage: MessageUsage | None = None
    trace_id: str | None = None
    created_at: datetime


class ConversationSummary(_Out):
    id: str
    title: str
    title_source: TitleSource
    model: str | None = None
    message_count: int
    created_at: datetime
    updated_at: datetime


class ConversationPage(_Out):
    data: list[ConversationSummary]
    next_cursor: str | None = None


class Conversation(ConversationSummary):
    system_prompt: str | None = None
    messages: list[Message]


class Deleted(_Out):
    id: str
    deleted: bool = True


class Exported(_Out):
    filename: str
    media_type: str
    content: str


class Owned(_Out):
    """`check` op: the conversation exists and is the caller's (else `not_found`)."""

    id: str


class EraseUser(_Body):
    """Deletes all the user's conversations and forgets them and `request_ids` (the user's
    other requests: API calls without a conversation, jobs) from the event log."""

    user_id: str = Field(min_length=1, max_length=128)
    request_ids: list[str] = Field(default_factory=list, max_length=1_000_000)


class RequestRef(_Body):
    """One request of the user's: `forget_request` (a deleted response: its turn leaves its
    conversation and it is forgotten from the event log), `response_get`."""

    user_id: str = Field(min_length=1, max_length=128)
    request_id: str = Field(min_length=1, max_length=128)


class StoredResponse(_Out):
    """`response_get` op: a stored response's terminal event, as the log had it."""

    terminal: dict[str, Any]


class Erased(_Out):
    conversations: int
    requests: int
