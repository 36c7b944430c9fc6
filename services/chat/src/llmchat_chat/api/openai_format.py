"""OpenAI wire shapes for chat completions (chunks, final object, usage)."""

from __future__ import annotations

from typing import Any

import orjson

from llmchat_common.contracts import Completed, Usage


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ChunkWriter:
    """Serialises `chat.completion.chunk`s for one stream; the constant parts are built once."""

    def __init__(
        self, request_id: str, model: str, created: int, include_usage: bool, conversation_id: str
    ) -> None:
        self._head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._include_usage = include_usage
        self._conversation_id = conversation_id

    @property
    def include_usage(self) -> bool:
        return self._include_usage

    def _chunk(self, delta: dict[str, str], finish_reason: str | None, head: dict[str, Any]) -> str:
        body: dict[str, Any] = {
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self._include_usage:
            body["usage"] = None
        return orjson.dumps(body).decode()

    def role(self) -> str:
        """The first chunk; it alone carries the conversation id (an extension field)."""
        head = {**self._head, "conversation_id": self._conversation_id}
        return self._chunk({"role": "assistant", "content": ""}, None, head)

    def content(self, text: str) -> str:
        return self._chunk({"content": text}, None, self._head)

    def finish(self, finish_reason: str) -> str:
        return self._chunk({}, finish_reason, self._head)

    def usage(self, usage: Usage) -> str:
        return orjson.dumps({**self._head, "choices": [], "usage": usage_body(usage)}).decode()


def completion_body(
    request_id: str, model: str, created: int, event: Completed, conversation_id: str
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "conversation_id": conversation_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": event.text},
                "logprobs": None,
                "finish_reason": event.finish_reason,
            }
        ],
        "usage": usage_body(event.usage),
    }
