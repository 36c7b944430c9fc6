"""OpenAI wire shapes for chat completions (chunks, final object, usage, logprobs, tool calls)."""

from __future__ import annotations

from typing import Any

import orjson

from llmchat_common.contracts import Choice, Completed, TokenLogprob, ToolCall, Usage


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def logprobs_body(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top],
            }
            for lp in logprobs
        ]
    }


def tool_calls_body(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [call.model_dump() for call in calls]


def choices_of(event: Completed) -> list[Choice]:
    """Every choice of a finished request (choice 0 is the event's own fields)."""
    if event.choices:
        return list(event.choices)
    return [
        Choice(
            index=0,
            text=event.text,
            finish_reason=event.finish_reason,
            tool_calls=event.tool_calls,
            content=event.content,
            logprobs=event.logprobs,
        )
    ]


def message_content(choice: Choice) -> str | None:
    """The assistant message's `content`: null when it only calls tools (OpenAI)."""
    if choice.content is not None:
        return choice.content or None
    return choice.text


class ChunkWriter:
    """Serialises `chat.completion.chunk`s for one stream; the constant parts are built once."""

    def __init__(
        self, request_id: str, model: str, created: int, include_usage: bool, conversation_id: str | None
    ) -> None:
        self._head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._include_usage = include_usage
        self._conversation_id = conversation_id

    @property
    def include_usage(self) -> bool:
        return self._include_usage

    def _chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None,
        head: dict[str, Any],
        *,
        index: int = 0,
        logprobs: list[TokenLogprob] | None = None,
    ) -> str:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs_body(logprobs),
            "finish_reason": finish_reason,
        }
        body: dict[str, Any] = {**head, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        return orjson.dumps(body).decode()

    def role(self, index: int = 0) -> str:
        """A choice's first chunk; the first one alone carries the conversation id (an
        extension field)."""
        head = {**self._head, "conversation_id": self._conversation_id} if index == 0 else self._head
        return self._chunk({"role": "assistant", "content": ""}, None, head, index=index)

    def content(self, text: str, *, index: int = 0, logprobs: list[TokenLogprob] | None = None) -> str:
        return self._chunk({"content": text}, None, self._head, index=index, logprobs=logprobs)

    def tool_call_start(self, position: int, call_id: str, name: str, *, index: int = 0) -> str:
        """A call's first chunk: its id, type and name, arguments still empty (OpenAI)."""
        call = {
            "index": position,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return self._chunk({"tool_calls": [call]}, None, self._head, index=index)

    def tool_call_arguments(self, position: int, fragment: str, *, index: int = 0) -> str:
        call = {"index": position, "function": {"arguments": fragment}}
        return self._chunk({"tool_calls": [call]}, None, self._head, index=index)

    def finish(self, finish_reason: str, *, index: int = 0) -> str:
        return self._chunk({}, finish_reason, self._head, index=index)

    def usage(self, usage: Usage) -> str:
        return orjson.dumps({**self._head, "choices": [], "usage": usage_body(usage)}).decode()


def completion_body(
    request_id: str, model: str, created: int, event: Completed, conversation_id: str | None
) -> dict[str, Any]:
    choices = []
    for choice in choices_of(event):
        message: dict[str, Any] = {"role": "assistant", "content": message_content(choice)}
        if choice.tool_calls:
            message["tool_calls"] = tool_calls_body(choice.tool_calls)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": logprobs_body(choice.logprobs),
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "conversation_id": conversation_id,
        "choices": choices,
        "usage": usage_body(event.usage),
    }
