"""What the RPC answers are made of, without the database: page cursors and exports."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime

from llmchat_common.history_contracts import Conversation, Exported, ExportFormat, Message
from llmchat_common.rpc import InvalidRequest


# -- cursors --------------------------------------------------------------------------------------
def encode_cursor(updated_at: datetime, conversation_id: str) -> str:
    """Opaque to clients: the (updated_at, id) of the last row of a page (keyset pagination,
    stable while conversations are added or updated)."""
    raw = json.dumps([updated_at.isoformat(), conversation_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated_at, conversation_id = json.loads(raw)
        at = datetime.fromisoformat(updated_at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidRequest("invalid request: cursor: not a cursor of this listing") from exc
    if at.tzinfo is None or not isinstance(conversation_id, str):
        raise InvalidRequest("invalid request: cursor: not a cursor of this listing")
    return at, conversation_id


# -- export ---------------------------------------------------------------------------------------
def export(conversation: Conversation, fmt: ExportFormat) -> Exported:
    if fmt == "json":
        # The `get` answer itself: `Conversation.model_validate_json(content)` gives it back.
        return Exported(
            filename=f"conversation-{conversation.id}.json",
            media_type="application/json",
            content=conversation.model_dump_json(indent=2),
        )
    return Exported(
        filename=f"conversation-{conversation.id}.md",
        media_type="text/markdown; charset=utf-8",
        content=render_markdown(conversation),
    )


def _when(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


_HEADINGS = {"user": "## User", "assistant": "## Assistant", "tool": "## Tool"}


def _heading(message: Message) -> str:
    heading = _HEADINGS[message.role]
    if message.tool_call_id:
        heading += f" ({_inline(message.tool_call_id)})"
    if message.status != "completed":
        heading += f" ({message.status}{': ' + message.error if message.error else ''})"
    return heading


def _calls(message: Message) -> list[str]:
    """An answer's tool calls, one fenced block each (arguments as the model wrote them)."""
    lines: list[str] = []
    for call in message.tool_calls or []:
        heading = f"Calls {_inline(call.function.name)} ({_inline(call.id)}):"
        lines += [heading, "", *_fenced(call.function.arguments), ""]
    return lines


def _inline(text: str) -> str:
    """Inline code that a backtick in the text (a model's or a client's) cannot end."""
    return "`" + text.replace("`", "'") + "`"


def _fenced(text: str) -> list[str]:
    # A fence longer than any run of backticks in the text, so the text cannot close it.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "json", text, fence]


def _footer(message: Message) -> str | None:
    """Model and usage of an answer, as one italic line."""
    if message.role != "assistant":
        return None
    parts = []
    if message.model:
        parts.append(f"model: {message.model}")
    if message.usage is not None:
        parts.append(
            f"tokens: {message.usage.prompt_tokens} prompt + {message.usage.completion_tokens} completion"
        )
    if message.finish_reason:
        parts.append(f"finish: {message.finish_reason}")
    return f"_{' · '.join(parts)}_" if parts else None


def render_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.title}", ""]
    lines.append(f"- Created: {_when(conversation.created_at)}")
    lines.append(f"- Updated: {_when(conversation.updated_at)}")
    if conversation.model:
        lines.append(f"- Model: {conversation.model}")
    lines.append(f"- Messages: {conversation.message_count}")
    lines.append("")
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt.strip(), ""]
    for message in conversation.messages:
        lines += [_heading(message), ""]
        calls = _calls(message)
        if message.content is not None or not calls:
            lines += [(message.content or "").strip() or "_(empty)_", ""]
        lines += calls
        footer = _footer(message)
        if footer:
            lines += [footer, ""]
    return "\n".join(lines).rstrip() + "\n"
