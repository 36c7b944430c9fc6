"""From an OpenAI chat-completions body to the request contract, with every check that needs more
than one field (or the model's capabilities): a bad request is refused here with a 400 naming
its field, before anything is queued, never by the engine minutes later."""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from llmchat_chat.api.schemas import ChatCompletionRequest, MessageIn, logit_bias_ids
from llmchat_chat.errors import ApiError
from llmchat_common.contracts import (
    ChatMessage,
    FunctionCall,
    FunctionTool,
    ModelCapabilities,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolChoice,
)

# A schema is compiled into a grammar by the engine for every request that carries it.
MAX_SCHEMA_BYTES = 64 * 1024


def check_schema(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """A JSON Schema the engine can constrain output to: valid (Draft 2020-12, as OpenAI's
    structured outputs), an object, bounded in size."""
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ApiError(f"the schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", param=param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ApiError(
            f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}", param=param
        ) from None
    return schema


def check_capabilities(body: ChatCompletionRequest, capabilities: ModelCapabilities | None) -> None:
    """What the model cannot do is refused by name (None: no live worker says yet; the worker
    then refuses what it cannot read)."""
    if capabilities is None:
        return
    if capabilities.kind != "chat":
        raise ApiError(f"the model {body.model!r} is an embedding model: use /v1/embeddings", param="model")
    for i, message in enumerate(body.messages):
        other = [kind for kind in message.other_parts() if _modality(kind) not in capabilities.modalities]
        if other:
            reads = " and ".join(capabilities.modalities)
            raise ApiError(
                f"the model {body.model!r} reads {reads} only; this message has {', '.join(other)} content",
                param=f"messages.{i}.content",
            )


def _modality(part_type: str) -> str:
    return {"image_url": "image", "input_image": "image", "input_audio": "audio"}.get(part_type, part_type)


def messages_of(body: ChatCompletionRequest) -> list[ChatMessage]:
    """The conversation as the contract has it; each tool message answers a call an earlier
    assistant message made."""
    calls: set[str] = set()
    out: list[ChatMessage] = []
    for i, message in enumerate(body.messages):
        if message.role == "tool" and message.tool_call_id not in calls:
            raise ApiError(
                f"tool message {i} answers {message.tool_call_id!r}, which no earlier assistant "
                "message called",
                param=f"messages.{i}.tool_call_id",
            )
        tool_calls = [_call(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
        calls.update(c.id for c in tool_calls)
        out.append(_message(message, tool_calls))
    return out


def _call(call_id: str, name: str, arguments: str) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


def _message(message: MessageIn, tool_calls: list[ToolCall]) -> ChatMessage:
    return ChatMessage(
        role="system" if message.role == "developer" else message.role,
        content=message.text(),
        tool_calls=tool_calls,
        tool_call_id=message.tool_call_id if message.role == "tool" else None,
        name=message.name,
    )


def tools_of(body: ChatCompletionRequest) -> tuple[list[FunctionTool], ToolChoice]:
    """The tools offered and the tool choice (OpenAI's default: `auto` with tools, else
    `none`); a forced choice names an offered tool."""
    tools: list[FunctionTool] = []
    for i, tool in enumerate(body.tools or []):
        function = tool.function
        if function.parameters is not None:
            check_schema(function.parameters, f"tools.{i}.function.parameters")
        tools.append(
            FunctionTool(
                name=function.name,
                description=function.description,
                parameters=function.parameters,
                strict=function.strict,
            )
        )
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ApiError("tool names must be unique", param="tools")
    choice = body.tool_choice
    if choice is None:
        return tools, "auto" if tools else "none"
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise ApiError("tool_choice 'required' needs tools", param="tool_choice")
        return tools, choice
    if choice.function.name not in names:
        raise ApiError(
            f"tool_choice names {choice.function.name!r}, which is not one of the tools", param="tool_choice"
        )
    return tools, NamedToolChoice(name=choice.function.name)


def response_format_of(body: ChatCompletionRequest) -> ResponseFormat | None:
    format_ = body.response_format
    if format_ is None or format_.type == "text":
        return None
    if format_.type == "json_object":
        return ResponseFormat(type="json_object")
    assert format_.json_schema is not None and format_.json_schema.schema_ is not None
    schema = check_schema(format_.json_schema.schema_, "response_format.json_schema.schema")
    return ResponseFormat(type="json_schema", json_schema=schema)


def choices_of(body: ChatCompletionRequest) -> int:
    n = body.n or 1
    if n > 1 and body.temperature == 0:
        # vLLM's rule: greedy sampling gives one answer.
        raise ApiError("n must be 1 with greedy sampling (temperature 0)", param="n")
    return n


def logprobs_of(body: ChatCompletionRequest) -> int | None:
    """vLLM's `logprobs` (how many top tokens; None: none) from OpenAI's pair."""
    if body.top_logprobs and not body.logprobs:
        raise ApiError("top_logprobs needs logprobs: true", param="top_logprobs")
    if not body.logprobs:
        return None
    return body.top_logprobs or 0


def logit_bias_of(body: ChatCompletionRequest) -> dict[int, float] | None:
    return logit_bias_ids(body.logit_bias)
