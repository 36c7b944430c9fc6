"""The Responses API side by side with vLLM's own server (`/v1/responses`, the same model,
engine arguments and tool parser: the `vllm_serve` fixture), for what needs no stored state: at
temperature 0 the same request gives the same output from both — the text, the function calls
(names and arguments as JSON), the status and the token counts — whole and streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.conftest import MAIN_MODEL

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": WEATHER,
    "strict": True,
}
CASES: dict[str, dict[str, Any]] = {
    "plain": {"input": "Hello there", "max_output_tokens": 16},
    "instructions and messages": {
        "instructions": "Answer briefly.",
        "input": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "input_text", "text": "How are you?"}]},
        ],
        "max_output_tokens": 16,
    },
    "json_schema": {
        "input": "Weather?",
        "text": {"format": {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}},
        "max_output_tokens": 100,
    },
    "named function": {
        "input": "Weather in Paris?",
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 200,
    },
    "function output round trip": {
        "input": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
        "tools": [TOOL],
        "max_output_tokens": 16,
    },
}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def outcome(response: Any) -> dict[str, Any]:
    """What must be equal: the text, the calls, the status and the token counts."""
    usage = response.usage
    return {
        "text": response.output_text,
        "calls": [(i.name, _json(i.arguments)) for i in response.output if i.type == "function_call"],
        "status": response.status,
        "usage": (usage.input_tokens, usage.output_tokens),
    }


async def ask(client: AsyncOpenAI, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    if not stream:
        return outcome(await client.responses.create(model=MAIN_MODEL, temperature=0, store=False, **body))
    events = [
        e
        async for e in await client.responses.create(
            model=MAIN_MODEL, temperature=0, store=False, stream=True, **body
        )
    ]
    final = events[-1].response
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return outcome(final)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", list(CASES))
async def test_same_response_as_vllm_serve(
    case: str, stream: bool, edge_url: str, api_key: str, vllm_serve: tuple[str, str]
) -> None:
    url, key = vllm_serve
    async with (
        AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=120) as ours,
        AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120) as theirs,
    ):
        assert await ask(ours, CASES[case], stream=stream) == await ask(theirs, CASES[case], stream=stream)
