"""Tool calling, structured outputs, logprobs, n and `store` through the edge, with the official
OpenAI SDK and its helpers (the random test model cannot choose well, but constrained decoding
makes its calls valid for their schemas, which is what these tests check)."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.helpers import eventually

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture
def client(edge_url: str, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def check_call(name: str, arguments: str) -> dict[str, Any]:
    """A call to an offered tool whose arguments are valid for its schema."""
    assert name in SCHEMAS
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, SCHEMAS[name])
    assert isinstance(parsed, dict)
    return parsed


async def test_named_tool_choice_is_forced_and_valid(client: AsyncOpenAI) -> None:
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    resp = await client.chat.completions.create(
        model="tiny-random", messages=ASK, tools=TOOLS, tool_choice=forced, temperature=0, max_tokens=200
    )
    choice = resp.choices[0]
    # OpenAI: a named choice ends `stop`; the message only calls the tool.
    assert choice.finish_reason == "stop"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call: Any = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    check_call(call.function.name, call.function.arguments)

    # Streamed, accumulated by the SDK's own helper: the same call (greedy).
    async with client.chat.completions.stream(
        model="tiny-random", messages=ASK, tools=TOOLS, tool_choice=forced, temperature=0, max_tokens=200
    ) as stream:
        fragments = 0
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                fragments += 1
        final = await stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "stop"
    assert streamed.message.tool_calls is not None
    streamed_calls: list[Any] = list(streamed.message.tool_calls)
    assert [(c.function.name, c.function.arguments) for c in streamed_calls] == [
        ("get_weather", call.function.arguments)
    ]
    assert fragments >= 1


async def test_required_tool_choice_calls_tools(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="tiny-random", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=300
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls: list[Any] = list(choice.message.tool_calls or [])
    assert calls
    for call in calls:
        check_call(call.function.name, call.function.arguments)
    assert len({c.id for c in calls}) == len(calls)

    # Streamed: the same calls, each with its index, id and name first.
    stream = await client.chat.completions.create(
        model="tiny-random",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=300,
        stream=True,
    )
    got: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for delta in c.delta.tool_calls or []:
                entry = got.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    assert not entry["id"], "a call's id comes once, in its first chunk"
                    entry["id"] = delta.id
                if delta.function and delta.function.name:
                    entry["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    entry["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert [(g["name"], g["arguments"]) for _, g in sorted(got.items())] == [
        (c.function.name, c.function.arguments) for c in calls
    ]

    # parallel_tool_calls=false: at most one call.
    single = await client.chat.completions.create(
        model="tiny-random",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=300,
    )
    assert len(single.choices[0].message.tool_calls or []) == 1


async def test_auto_and_none_stream_what_they_answer(client: AsyncOpenAI) -> None:
    for tool_choice in ("auto", "none"):
        resp = await client.chat.completions.create(
            model="tiny-random",
            messages=ASK,
            tools=TOOLS,
            tool_choice=tool_choice,
            temperature=0,
            max_tokens=32,
        )
        stream = await client.chat.completions.create(
            model="tiny-random",
            messages=ASK,
            tools=TOOLS,
            tool_choice=tool_choice,
            temperature=0,
            max_tokens=32,
            stream=True,
        )
        text = ""
        async for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
        message = resp.choices[0].message
        if not message.tool_calls:
            assert text == message.content
            assert resp.choices[0].finish_reason in ("stop", "length")


async def test_a_tool_round_trip_is_stored_in_history(
    client: AsyncOpenAI, edge_url: str, api_key: str
) -> None:
    forced: Any = {"type": "function", "function": {"name": "get_time"}}
    first = await client.chat.completions.create(
        model="tiny-random",
        messages=ASK,
        tools=TOOLS,
        tool_choice=forced,
        temperature=0,
        max_tokens=100,
        extra_body={"store": True},
    )
    cid = (first.model_extra or {})["conversation_id"]
    assert cid
    call: Any = (first.choices[0].message.tool_calls or [])[0]
    answer = await client.chat.completions.create(
        model="tiny-random",
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": '{"time": "12:00"}'},
        ],
        tools=TOOLS,
        temperature=0,
        max_tokens=8,
        extra_body={"conversation_id": cid},
    )
    assert answer.choices[0].message.content is not None

    async def stored() -> list[dict[str, Any]] | None:
        async with httpx.AsyncClient(base_url=edge_url, timeout=10) as http:
            resp = await http.get(f"/v1/conversations/{cid}", headers={"Authorization": f"Bearer {api_key}"})
        messages: list[dict[str, Any]] = resp.json().get("messages", []) if resp.status_code == 200 else []
        return messages if len(messages) == 4 else None

    messages = await eventually(stored, timeout=30, what="the tool round trip in history")
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["content"] is None
    assert messages[1]["tool_calls"][0]["id"] == call.id
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == call.function.arguments
    assert messages[2]["tool_call_id"] == call.id and messages[2]["content"] == '{"time": "12:00"}'


class Forecast(BaseModel):
    city: Literal["Paris", "London"]
    sunny: bool


async def test_structured_outputs_parse_into_the_callers_model(client: AsyncOpenAI) -> None:
    parsed = await client.chat.completions.parse(
        model="tiny-random",
        messages=[{"role": "user", "content": "Forecast for Paris as JSON."}],
        response_format=Forecast,
        temperature=0,
        max_tokens=200,
    )
    forecast = parsed.choices[0].message.parsed
    assert isinstance(forecast, Forecast)

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    resp = await client.chat.completions.create(
        model="tiny-random",
        messages=[{"role": "user", "content": "JSON please"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": schema, "strict": True},
        },
        temperature=0,
        max_tokens=200,
    )
    assert resp.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), schema)


async def test_json_object_mode_answers_json(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="tiny-random",
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=400,
    )
    content = resp.choices[0].message.content or ""
    assert content.lstrip().startswith("{")
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


async def test_logprobs_streamed_and_not(client: AsyncOpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "tiny-random",
        "messages": ASK,
        "temperature": 0,
        "max_tokens": 12,
        "logprobs": True,
        "top_logprobs": 3,
        "extra_body": {"ignore_eos": True},
    }
    resp = await client.chat.completions.create(**kwargs)
    logprobs = resp.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert resp.usage is not None and len(logprobs.content) == resp.usage.completion_tokens == 12
    for entry in logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs), abs=1e-4)
    stream = await client.chat.completions.create(stream=True, **kwargs)
    streamed = []
    async for chunk in stream:
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in logprobs.content
    ]


async def test_n_choices_and_sampling_extras(client: AsyncOpenAI) -> None:
    resp = await client.chat.completions.create(
        model="tiny-random",
        messages=ASK,
        n=3,
        temperature=1.0,
        seed=7,
        max_tokens=6,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"5": -100},
        stop=[f"zz{i}" for i in range(20)],
        extra_body={"ignore_eos": True, "top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1},
    )
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage is not None and resp.usage.completion_tokens == 18
    stream = await client.chat.completions.create(
        model="tiny-random", messages=ASK, n=2, temperature=1.0, seed=3, max_tokens=5, stream=True
    )
    texts = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert set(finishes) == {0, 1}
    assert texts[0] and texts[1]


async def test_store_decides_whether_an_api_call_is_a_conversation(edge_url: str, api_key: str) -> None:
    body = {"model": "tiny-random", "messages": ASK, "max_tokens": 2}
    async with httpx.AsyncClient(
        base_url=edge_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        plain = await http.post("/v1/chat/completions", json=body)
        assert plain.status_code == 200
        assert "x-conversation-id" not in plain.headers and plain.json()["conversation_id"] is None
        stored = await http.post("/v1/chat/completions", json={**body, "store": True})
        cid = stored.headers["x-conversation-id"]
        assert stored.json()["conversation_id"] == cid
        # Accepted and ignored, as OpenAI-compatible servers do.
        ignored = await http.post(
            "/v1/chat/completions",
            json={
                **body,
                "reasoning_effort": "low",
                "metadata": {"a": "b"},
                "service_tier": "auto",
                "user": "u",
            },
        )
        assert ignored.status_code == 200


async def test_models_say_what_they_support(client: AsyncOpenAI) -> None:
    listed = await client.models.list()
    entry = next(m for m in listed.data if m.id == "tiny-random")
    capabilities = (entry.model_extra or {})["capabilities"]
    assert capabilities["kind"] == "chat"
    assert capabilities["tools"] and capabilities["json_output"]
    assert capabilities["modalities"] == ["text"]
    one = await client.models.retrieve("tiny-random")
    assert one.id == "tiny-random" and one.object == "model"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
