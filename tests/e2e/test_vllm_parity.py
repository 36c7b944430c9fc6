"""Side by side with vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`),
started once on the same model with the same engine arguments and tool parser: at temperature 0
every request of the matrix must give the same answer from both, ids and timestamps aside —
content, tool calls (names and arguments), finish reasons, log probabilities and usage; the same
for the streamed form, accumulated."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ROUND_TRIP = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
]
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "mood": {"type": "string", "enum": ["calm", "busy"]}},
    "required": ["ok", "mood"],
    "additionalProperties": False,
}

MATRIX: dict[str, dict[str, Any]] = {
    "plain": {"messages": ASK, "max_tokens": 24},
    "named tool": {
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 200,
    },
    "required tool": {
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "max_tokens": 300,
    },
    "required, one call": {
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 300,
    },
    "auto tool": {"messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 32},
    "tool choice none": {"messages": ASK, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 16},
    "tool round trip": {"messages": ROUND_TRIP, "tools": [WEATHER], "max_tokens": 16},
    "json_schema": {
        "messages": [{"role": "user", "content": "JSON please"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": SCHEMA, "strict": True},
        },
        "max_tokens": 200,
    },
    "json_object": {
        "messages": [{"role": "user", "content": "JSON please"}],
        "response_format": {"type": "json_object"},
        "max_tokens": 48,
    },
    "logprobs": {"messages": ASK, "max_tokens": 8, "logprobs": True, "top_logprobs": 4},
    "penalties and extras": {
        "messages": ASK,
        "max_tokens": 16,
        "presence_penalty": 1.2,
        "frequency_penalty": 0.7,
        "repetition_penalty": 1.3,
        "top_k": 10,
        "min_p": 0.05,
        "logit_bias": {"20": 5, "21": -100},
    },
    # vLLM's server takes at most 4 (OpenAI's limit; the edge takes 64: test_tools.py).
    "stops": {"messages": ASK, "max_tokens": 40, "stop": ["zz0", "zz1", "zz2", "e"]},
    "seeded n": {"messages": ASK, "max_tokens": 6, "n": 3, "temperature": 0.9, "seed": 11},
}


def _logprobs(value: Any) -> Any:
    if not value or not value.get("content"):
        return None
    return [
        (
            e["token"],
            round(e["logprob"], 3),
            [(t["token"], round(t["logprob"], 3)) for t in e["top_logprobs"]],
        )
        for e in value["content"]
    ]


def _calls(calls: list[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """Names and arguments, the arguments as JSON values: vLLM's own server streams a call's
    arguments as the model spaced them but answers them re-serialised when not streaming."""
    return [(c["function"]["name"], _json(c["function"]["arguments"])) for c in calls or []]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    """What must be equal: each choice's content ("" and null alike: vLLM says "" for a forced
    call, OpenAI null), calls, finish reason and logprobs; the token counts."""
    usage = body["usage"]
    return {
        "usage": (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
        "choices": [
            {
                "index": c["index"],
                "content": c["message"].get("content") or None,
                "tool_calls": _calls(c["message"].get("tool_calls")),
                "finish_reason": c["finish_reason"],
                "logprobs": _logprobs(c.get("logprobs")),
            }
            for c in sorted(body["choices"], key=lambda c: c["index"])
        ],
    }


def accumulate(lines: list[str]) -> dict[str, Any]:
    """A stream's chunks folded into the shape of a whole answer."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    assert lines and lines[-1] == "[DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line)
        assert "error" not in chunk, chunk
        usage = chunk.get("usage") or usage
        for c in chunk["choices"]:
            entry = choices.setdefault(
                c["index"], {"index": c["index"], "content": "", "calls": {}, "finish_reason": None, "lp": []}
            )
            delta = c.get("delta") or {}
            entry["content"] += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = entry["calls"].setdefault(call["index"], {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if c.get("logprobs") and c["logprobs"].get("content"):
                entry["lp"].extend(c["logprobs"]["content"])
            entry["finish_reason"] = c.get("finish_reason") or entry["finish_reason"]
    assert usage is not None
    return {
        "usage": usage,
        "choices": [
            {
                "index": e["index"],
                "message": {
                    "content": e["content"],
                    "tool_calls": [{"function": e["calls"][i]} for i in sorted(e["calls"])],
                },
                "finish_reason": e["finish_reason"],
                "logprobs": {"content": e["lp"]} if e["lp"] else None,
            }
            for e in choices.values()
        ],
    }


async def ask(base: str, key: str, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=180
    ) as http:
        if not stream:
            resp = await http.post("/v1/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            return dict(resp.json())
        lines: list[str] = []
        full = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", "/v1/chat/completions", json=full) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line.removeprefix("data: "))
        return accumulate(lines)


# A `required` answer cut short by max_tokens in the middle of its calls: vLLM's server streams
# the calls its incremental parser found, but its whole answer has none (the text as content);
# llmchat answers such a stream as its whole answer. Strict: the day they agree, this says so.
CUT_SHORT = pytest.mark.xfail(strict=True, reason="vLLM streams partial calls of a cut-short answer")


@pytest.mark.parametrize(
    ("case", "stream"),
    [
        pytest.param(case, stream, id=f"{case}-{'streamed' if stream else 'whole'}", marks=marks)
        for case in MATRIX
        for stream in (False, True)
        for marks in [(CUT_SHORT,) if case == "required tool" and stream else ()]
    ],
)
async def test_same_answer_as_vllm_serve(
    case: str, stream: bool, vllm_serve: tuple[str, str], edge_url: str, api_key: str
) -> None:
    body = {"model": "tiny-random", "temperature": 0, **MATRIX[case]}
    theirs = normalise(await ask(*vllm_serve, body, stream=stream))
    ours = normalise(await ask(edge_url, api_key, body, stream=stream))
    assert ours == theirs
