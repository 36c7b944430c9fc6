"""Conversation titles: the fallback from the first words, the cleaning of a model's answer, and
the low-priority request that asks the model for one (pure functions; publishing is
`TitlePublisher` in projection.py)."""

from __future__ import annotations

import re

from llmchat_common.contracts import PRIORITY_BACKGROUND, ChatMessage, ChatRequested, GenerationParams

FALLBACK_WORDS = 8
MAX_TITLE_CHARS = 80
UNTITLED = "New conversation"
TITLE_PROMPT_CHARS = 1000
TITLE_MAX_TOKENS = 16
TITLE_TEMPERATURE = 0.2

TITLE_INSTRUCTION = (
    "Write a short title (at most 6 words) for the conversation below. "
    "Answer with the title only: no quotes, no punctuation at the end, no explanation."
)

_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_PREFIX = re.compile(r"^\s*(title|titel|titre)\s*:\s*", re.IGNORECASE)


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary when there is one."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip()


def fallback_title(first_user_message: str | None) -> str:
    """The first words of the first user message, on one line."""
    words = (first_user_message or "").split()
    if not words:
        return UNTITLED
    title = " ".join(words[:FALLBACK_WORDS])
    if len(words) > FALLBACK_WORDS:
        title += "…"
    return _shorten(title, MAX_TITLE_CHARS)


def clean_title(answer: str) -> str | None:
    """A model's answer as a title: its first non-empty line, without quotes, a `Title:` prefix
    or trailing punctuation, at most 80 characters; None when nothing is left."""
    line = next((ln for ln in answer.splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line.strip())
    line = line.strip().strip(_QUOTES).strip()
    line = _PREFIX.sub("", line).strip(_QUOTES + " ").rstrip(".:;,")
    line = re.sub(r"\s+", " ", line).strip()
    # Markdown emphasis or a heading marker the model added.
    line = line.strip("*#_ ").strip()
    if not line:
        return None
    return _shorten(line, MAX_TITLE_CHARS)


def title_request_id(conversation_id: str) -> str:
    return f"title-{conversation_id}"


def title_prompt(first_user_message: str, first_answer: str) -> str:
    """What the model reads to name a conversation: its opening exchange, bounded."""
    user = _shorten(first_user_message.strip(), TITLE_PROMPT_CHARS // 2)
    budget = TITLE_PROMPT_CHARS - len(user)
    answer = _shorten(first_answer.strip(), max(budget, 100))
    return f"User: {user}\n\nAssistant: {answer}"


def title_request(
    *,
    conversation_id: str,
    user_id: str,
    model: str,
    first_user_message: str,
    first_answer: str,
    now: float,
    timeout_s: float,
    trace_id: str | None = None,
) -> ChatRequested:
    """An ordinary request, visible in the log like any other; its id is derived from the
    conversation, so a retried publish is a no-op (Nats-Msg-Id) and there is one per conversation."""
    return ChatRequested(
        request_id=title_request_id(conversation_id),
        model=model,
        messages=[
            ChatMessage(role="system", content=TITLE_INSTRUCTION),
            ChatMessage(role="user", content=title_prompt(first_user_message, first_answer)),
        ],
        params=GenerationParams(max_tokens=TITLE_MAX_TOKENS, temperature=TITLE_TEMPERATURE),
        user_id=user_id,
        conversation_id=conversation_id,
        kind="title",
        priority=PRIORITY_BACKGROUND,
        created_at=now,
        deadline=now + timeout_s,
        trace_id=trace_id,
    )
