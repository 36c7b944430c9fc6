"""Tool calling and structured output on the worker's side, with vLLM's server as the reference.

- `tool_choice: required` and a named choice are enforced by constrained decoding: the model can
  only write a JSON array of `{"name", "parameters"}` (required) or the named function's
  arguments (named), so the calls are valid JSON for their schemas on any model. The text is
  then read back into calls here, exactly as vLLM's server does (`parser/abstract_parser.py`).
- `tool_choice: auto` lets the model write what it wants; the profile's tool-call parser (one
  of vLLM's) finds the calls in the text (`engine.VllmEngine.parse_tool_calls`).

Call ids are derived from the request id, the choice and the call's position, so every reader
(the edge streaming the calls before the terminal event exists, history, a replay) names a call
the same way without asking anyone.
"""

from __future__ import annotations

import json
from typing import Any

from llmchat_common.contracts import (
    ChatRequested,
    FunctionCall,
    FunctionTool,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    tool_call_id,
)

EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def _params(tool: FunctionTool) -> dict[str, Any]:
    # Empty or missing parameters still constrain the arguments to a JSON object (vLLM).
    return dict(tool.parameters) if tool.parameters else dict(EMPTY_OBJECT)


def required_schema(tools: list[FunctionTool], parallel_tool_calls: bool) -> dict[str, Any]:
    """vLLM's schema for `tool_choice: required`: a non-empty array of calls to the tools (at
    most one without parallel calls), the tools' `$defs` hoisted to the top."""
    defs: dict[str, Any] = {}
    variants = []
    for tool in tools:
        params = _params(tool)
        found = params.pop("$defs", None)
        if isinstance(found, dict):
            defs.update(found)
        variants.append(
            {
                "properties": {"name": {"type": "string", "enum": [tool.name]}, "parameters": params},
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": variants}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def constraint(request: ChatRequested) -> ResponseFormat | None:
    """What the engine must constrain the output to: the forced tool call's shape when the
    tool choice forces one (it overrides `response_format`, as in vLLM), else the request's
    structured output, if any."""
    if request.tools_active():
        choice = request.tool_choice
        if isinstance(choice, NamedToolChoice):
            tool = next(t for t in request.tools if t.name == choice.name)
            return ResponseFormat(type="json_schema", json_schema=_params(tool))
        if choice == "required":
            return ResponseFormat(
                type="json_schema", json_schema=required_schema(request.tools, request.parallel_tool_calls)
            )
    format_ = request.params.response_format
    return None if format_ is None or format_.type == "text" else format_


def forced_calls(request: ChatRequested, text: str, choice: int = 0) -> list[ToolCall] | None:
    """The calls of a forced (`required` or named) tool choice read from the constrained text;
    None when the tool choice forces nothing (`auto` is the parser's job)."""
    if not request.tools_active():
        return None
    tool_choice = request.tool_choice
    if isinstance(tool_choice, NamedToolChoice):
        if not text.strip():
            return []
        return [_call(request, choice, 0, tool_choice.name, text)]
    if tool_choice != "required":
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return []  # cut short (max_tokens, a stop string): no call, as in vLLM
    calls: list[ToolCall] = []
    if isinstance(parsed, list):
        for item in parsed:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                arguments = json.dumps(item.get("parameters", {}), ensure_ascii=False)
                calls.append(_call(request, choice, len(calls), item["name"], arguments))
    return calls


def _call(request: ChatRequested, choice: int, position: int, name: str, arguments: str) -> ToolCall:
    return ToolCall(
        id=tool_call_id(request.request_id, choice, position),
        function=FunctionCall(name=name, arguments=arguments),
    )


def finish_reason(request: ChatRequested, engine_reason: str, calls: list[ToolCall]) -> str:
    """OpenAI's: `tool_calls` when the model called tools by its own choice (`auto`) or as
    `required` asked; `stop` for a named choice (the caller asked for exactly that call)."""
    if not calls:
        return engine_reason
    if isinstance(request.tool_choice, NamedToolChoice):
        return engine_reason
    if request.tool_choice == "required" and engine_reason != "stop":
        return engine_reason
    return "tool_calls"


def template_tools(tools: list[FunctionTool]) -> list[dict[str, Any]] | None:
    """The tools as chat templates expect them (OpenAI's request shape)."""
    if not tools:
        return None
    # vLLM's own rendering (`ChatCompletionToolsParam.model_dump()`): an absent description or
    # parameters are null, `strict` only when set; the prompt is the same token for token.
    rendered = []
    for tool in tools:
        function: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        }
        if tool.strict is not None:
            function["strict"] = tool.strict
        rendered.append({"type": "function", "function": function})
    return rendered


def template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it: an assistant's tool call arguments as objects
    (vLLM and transformers do the same), empty fields left out."""
    out: dict[str, Any] = {"role": message["role"], "content": message["content"]}
    calls = message.get("tool_calls") or []
    if calls:
        out["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": _arguments(call)},
            }
            for call in calls
        ]
    for key in ("tool_call_id", "name"):
        if message.get(key):
            out[key] = message[key]
    return out


def _arguments(call: dict[str, Any]) -> Any:
    raw = call["function"]["arguments"]
    try:
        return json.loads(raw)
    except ValueError:
        return raw
