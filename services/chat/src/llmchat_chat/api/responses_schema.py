"""The OpenAI Responses API request as we accept it, and its input items.

Unknown fields are ignored (OpenAI's SDKs send only what the caller set). What this server
cannot do is refused by name with a 400: OpenAI's built-in tools (web search, file search,
computer use, ...), input that is not text, item references, and server-side `conversation`
objects (a chain of responses is followed by `previous_response_id`).

Input items are kept as OpenAI's item shapes (each with an id), so that `input_items` returns
them and a later response that continues the chain reads them back.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmchat_chat.api.schemas import FUNCTION_NAME, MAX_TOOLS, Text
from llmchat_chat.errors import ApiError

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_INPUT_ITEMS = 2048
# The function tool is the one kind a self-hosted model can call here; these are OpenAI's own.
BUILT_IN_TOOLS = {
    "web_search": "web search",
    "web_search_preview": "web search",
    "file_search": "file search",
    "computer_use_preview": "computer use",
    "computer": "computer use",
    "code_interpreter": "the code interpreter",
    "image_generation": "image generation",
    "mcp": "remote MCP servers",
    "local_shell": "the local shell",
    "shell": "the shell",
    "apply_patch": "apply_patch",
    "custom": "custom (free-form) tools",
}


def item_id(prefix: str, *parts: object) -> str:
    """A stable id: the same for every reader that derives it (the live stream, a replay, a
    retrieve), from the response id and the item's place."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return f"{prefix}_{digest[:40]}"


class FunctionToolIn(BaseModel):
    """Responses' function tool: flat (`name` beside `type`, not under `function`)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    name: str | None = Field(default=None, pattern=FUNCTION_NAME)
    description: Text | None = Field(default=None, max_length=64 * 1024)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    name: str | None = Field(default=None, max_length=64)


class TextFormatIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str = Field(default="response", pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def schema_given(self) -> TextFormatIn:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("schema is required for the json_schema format")
        return self


class TextIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormatIn | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1, max_length=256)
    # The bound is on the items (on a union, pydantic would apply it to a string's length too).
    input: Text | Annotated[list[dict[str, Any]], Field(max_length=MAX_INPUT_ITEMS)]
    instructions: Text | None = None
    tools: list[FunctionToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    text: TextIn | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[Text, Text] | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, max_length=128)
    background: bool | None = None
    stream: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # OpenAI's server-side conversation objects: not here (follow `previous_response_id`).
    conversation: Any = None
    # Extensions, as in chat completions.
    timeout: float | None = Field(default=None, gt=0, description="deadline in seconds")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    ignore_eos: bool = False

    @field_validator("metadata")
    @classmethod
    def bounded_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys")
        for key, text in value.items():
            if len(key) > MAX_METADATA_KEY:
                raise ValueError(f"keys are at most {MAX_METADATA_KEY} characters")
            if len(text) > MAX_METADATA_VALUE:
                raise ValueError(f"values are at most {MAX_METADATA_VALUE} characters")
        return value

    @field_validator("conversation")
    @classmethod
    def no_conversation_objects(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("conversation objects are not supported; continue with previous_response_id")
        return value

    @field_validator("input")
    @classmethod
    def some_input(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list) and not value:
            raise ValueError("input must hold at least one item")
        return value


def check_tools(body: ResponsesRequest) -> None:
    """Function tools only, each named, named once; a forced choice names one of them."""
    names: list[str] = []
    for i, tool in enumerate(body.tools or []):
        if tool.type != "function":
            what = BUILT_IN_TOOLS.get(tool.type.split("_20")[0], f"tools of type {tool.type!r}")
            raise ApiError(
                f"{what} is an OpenAI built-in tool, not available on this server; offer function tools",
                param=f"tools.{i}.type",
                code="unsupported_tool",
            )
        if tool.name is None:
            raise ApiError("a function tool needs its name", param=f"tools.{i}.name")
        names.append(tool.name)
    if len(set(names)) != len(names):
        raise ApiError("tool names must be unique", param="tools")
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceIn):
        if choice.type != "function":
            raise ApiError(
                f"tool_choice of type {choice.type!r} is not available; use a function tool",
                param="tool_choice.type",
            )
        if choice.name not in names:
            raise ApiError(
                f"tool_choice names {choice.name!r}, which is not one of the tools", param="tool_choice.name"
            )
    elif choice == "required" and not names:
        raise ApiError("tool_choice 'required' needs tools", param="tool_choice")


def _checked(value: str, param: str) -> str:
    """Text that can be stored and sent (no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError("must be valid Unicode text (it holds a lone surrogate)", param=param) from None
    return value


def _text_of(content: Any, param: str) -> str:
    """A message's content: a string, or text parts (`input_text`, `output_text`, `text`)."""
    if isinstance(content, str):
        return _checked(content, param)
    if not isinstance(content, list):
        raise ApiError("content must be a string or a list of content parts", param=param)
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(_checked(part["text"], f"{param}.{j}.text"))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(_checked(part["refusal"], f"{param}.{j}.refusal"))
        else:
            raise ApiError(
                f"content parts of type {kind!r} are not supported; this server reads text",
                param=f"{param}.{j}.type",
            )
    return "".join(texts)


def input_items(body: ResponsesRequest, response_id: str) -> list[dict[str, Any]]:
    """The request's input as OpenAI's input items, each with an id (the caller's, or one
    derived from the response id and its place)."""
    if isinstance(body.input, str):
        raw: list[Any] = [{"type": "message", "role": "user", "content": body.input}]
    else:
        raw = body.input
    items: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        param = f"input.{i}"
        if not isinstance(item, dict):
            raise ApiError("an input item must be an object", param=param)
        kind = item.get("type", "message")
        given = item.get("id")
        if given is not None and not (isinstance(given, str) and 0 < len(given) <= 128):
            raise ApiError("an item id is a string of at most 128 characters", param=f"{param}.id")
        if given is not None:
            _checked(given, f"{param}.id")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise ApiError(
                    "role must be one of user, system, developer, assistant", param=f"{param}.role"
                )
            text = _text_of(item.get("content"), f"{param}.content")
            part = "output_text" if role == "assistant" else "input_text"
            content: dict[str, Any] = {"type": part, "text": text}
            if part == "output_text":
                content["annotations"] = []
            items.append(
                {
                    "type": "message",
                    "id": given or item_id("msg", response_id, "input", i),
                    "role": role,
                    "content": [content],
                    "status": "completed",
                }
            )
        elif kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str) or (field != "arguments" and not item[field]):
                    raise ApiError(f"a function_call item needs its {field}", param=f"{param}.{field}")
                _checked(item[field], f"{param}.{field}")
            items.append(
                {
                    "type": "function_call",
                    "id": given or item_id("fc", response_id, "input", i),
                    "call_id": item["call_id"],
                    "name": item["name"],
                    "arguments": item["arguments"],
                    "status": "completed",
                }
            )
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not item["call_id"]:
                raise ApiError("a function_call_output item needs its call_id", param=f"{param}.call_id")
            _checked(item["call_id"], f"{param}.call_id")
            output = item.get("output")
            text = _text_of(output, f"{param}.output")
            items.append(
                {
                    "type": "function_call_output",
                    "id": given or item_id("fco", response_id, "input", i),
                    "call_id": item["call_id"],
                    "output": text,
                    "status": "completed",
                }
            )
        elif kind == "reasoning":
            continue  # a model's reasoning summary handed back: nothing a chat template reads
        else:
            raise ApiError(f"input items of type {kind!r} are not supported", param=f"{param}.type")
    if not any(item["type"] != "message" or item["role"] != "assistant" for item in items):
        raise ApiError("input holds no message or tool output to answer", param="input")
    return items


def messages_of_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input and output items as chat messages (the chat-completions shape): consecutive
    function calls join one assistant message (with the assistant text just before them), and
    each function output is a `tool` message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(part.get("text", "") for part in item["content"])
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages
