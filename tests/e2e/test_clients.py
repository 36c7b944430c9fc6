"""Real clients pointed at the edge's base URL, as an app builder would: LangChain's ChatOpenAI,
the OpenAI Agents SDK on its chat-completions model, and Open WebUI's own requests (rebuilt from
its source in openwebui_requests.py), all on the random test model. Its text is nonsense, but
constrained decoding makes its tool calls and JSON valid for their schemas, which is what the
clients rely on. Each client's requests are captured on the wire and checked for the features
they are meant to exercise, so that a client changing what it sends cannot make a test pass
vacuously."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import httpx2
import jsonschema
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from httpx_sse import aconnect_sse
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import BaseModel, SecretStr

from tests.conftest import MAIN_MODEL
from tests.e2e.openwebui_requests import (
    BUILTIN_TOOLS,
    OpenWebUIChat,
    builtin_tools,
    image_message,
    upstream,
)
from tests.helpers import Account, eventually, register_account

Body = dict[str, Any]


class Recorder:
    """The JSON bodies a client sends, read from its own HTTP client's request hook (httpx2:
    the OpenAI SDK's HTTP client, under LangChain's and the Agents SDK's too)."""

    def __init__(self) -> None:
        self.bodies: list[Body] = []
        self.clients: list[httpx2.AsyncClient] = []

    async def hook(self, request: httpx2.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append(json.loads(request.content))

    def client(self) -> httpx2.AsyncClient:
        client = httpx2.AsyncClient(timeout=120, event_hooks={"request": [self.hook]})
        self.clients.append(client)
        return client


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    yield recorder
    for client in recorder.clients:
        await client.aclose()


def chat_model(edge_url: str, api_key: str, recorder: Recorder, max_tokens: int) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{edge_url}/v1",
        api_key=SecretStr(api_key),
        model=MAIN_MODEL,
        temperature=0,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        max_retries=0,
        http_async_client=recorder.client(),
    )


# Enums and a boolean: whatever the random model picks, the call ends within a few tokens.
class GetWeather(BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "London", "Tokyo"]
    unit: Literal["celsius", "fahrenheit"]
    detailed: bool


class Forecast(BaseModel):
    city: Literal["Paris", "London"]
    sunny: bool


async def test_langchain_forced_tool_call_streamed_and_not(
    edge_url: str, api_key: str, recorder: Recorder
) -> None:
    llm = chat_model(edge_url, api_key, recorder, max_tokens=300).bind_tools(
        [GetWeather], tool_choice="GetWeather"
    )
    ask = "What is the weather in Paris?"
    message = await llm.ainvoke(ask)
    assert isinstance(message, AIMessage)
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call["name"] == "GetWeather" and call["id"]
    GetWeather.model_validate(call["args"])
    jsonschema.validate(call["args"], GetWeather.model_json_schema())

    # Streamed: the chunks add up (AIMessageChunk's own accumulation) to the same call.
    chunks: list[AIMessageChunk] = []
    async for chunk in llm.astream(ask):
        assert isinstance(chunk, AIMessageChunk)
        chunks.append(chunk)
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(call["name"], call["args"])]
    assert len([c for c in chunks if c.tool_call_chunks]) > 1, "the arguments arrive as fragments"

    sent, streamed = recorder.bodies
    forced = {"type": "function", "function": {"name": "GetWeather"}}
    assert sent["tool_choice"] == forced and streamed["tool_choice"] == forced
    assert [t["function"]["name"] for t in sent["tools"]] == ["GetWeather"]
    assert streamed["stream"] is True and not sent.get("stream")


async def test_langchain_structured_output_default_method(
    edge_url: str, api_key: str, recorder: Recorder
) -> None:
    structured = chat_model(edge_url, api_key, recorder, max_tokens=200).with_structured_output(Forecast)
    forecast = await structured.ainvoke("Forecast for Paris, as JSON.")
    assert isinstance(forecast, Forecast)
    # langchain-openai's default for ChatOpenAI: OpenAI's structured outputs, not a tool call.
    (sent,) = recorder.bodies
    assert "tools" not in sent and "tool_choice" not in sent
    format_ = sent["response_format"]
    assert format_["type"] == "json_schema", format_
    assert format_["json_schema"]["name"] == "Forecast" and format_["json_schema"]["strict"] is True
    assert format_["json_schema"]["schema"]["properties"].keys() == {"city", "sunny"}


async def test_langchain_plain_answer(edge_url: str, api_key: str, recorder: Recorder) -> None:
    message = await chat_model(edge_url, api_key, recorder, max_tokens=16).ainvoke("Hello there!")
    assert isinstance(message, AIMessage)
    assert isinstance(message.content, str) and message.content
    assert not message.tool_calls
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert message.usage_metadata is not None and 0 < message.usage_metadata["output_tokens"] <= 16
    (sent,) = recorder.bodies
    assert sent["messages"] == [{"role": "user", "content": "Hello there!"}]
    # langchain-openai sends OpenAI's current name for the limit.
    assert sent["max_completion_tokens"] == 16 and "max_tokens" not in sent


class Verdict(BaseModel):
    city: Literal["Paris", "London"]
    sunny: bool


async def test_agents_sdk_calls_its_tool_then_answers_in_its_output_type(
    edge_url: str, api_key: str, recorder: Recorder
) -> None:
    set_tracing_disabled(True)  # nothing to export to (no internet)
    calls: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: Literal["Paris", "London"], unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather in a city."""
        calls.append((city, unit))
        return "sunny, 21 degrees"

    client = AsyncOpenAI(
        base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, http_client=recorder.client()
    )
    agent = Agent(
        name="forecaster",
        instructions="Look up the weather, then give your verdict.",
        model=OpenAIChatCompletionsModel(model=MAIN_MODEL, openai_client=client),
        tools=[get_weather],
        # One call per turn: left free, the random model writes call after call until
        # max_tokens cuts the list short (no call comes back complete).
        model_settings=ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=600
        ),
        output_type=Verdict,
    )
    result = await Runner.run(agent, "Is it sunny in Paris?", max_turns=4)

    assert isinstance(result.final_output, Verdict)
    assert len(calls) == 1, "the tool ran once"
    city, unit = calls[0]
    assert city in ("Paris", "London") and unit in ("celsius", "fahrenheit")
    # Two turns: the tool forced, then (reset_tool_choice) the answer; both constrained to the
    # output type's schema, which the forced tool call overrides in the first.
    first, second = recorder.bodies
    assert first["tool_choice"] == "required" and first["parallel_tool_calls"] is False
    assert "tool_choice" not in second
    for body in (first, second):
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": city, "unit": unit}
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "sunny, 21 degrees",
    }


# Open WebUI ---------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def owui_account(edge_url: str) -> Account:
    """The account an Open WebUI install's connection uses (its API key): its own, so that its
    conversation list says exactly what Open WebUI's traffic left behind."""
    return register_account(edge_url)


@pytest.fixture
async def owui_http(edge_url: str, owui_account: Account) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"{edge_url}/v1", headers=bearer(owui_account.api_key), timeout=180
    ) as http:
        yield http


async def stream_chat(http: httpx.AsyncClient, body: Body) -> tuple[str, list[str], list[Body]]:
    """Reads an SSE answer: its text, its finish reasons and the tool-call deltas; the last
    event must be [DONE]."""
    text, finishes, calls = "", list[str](), list[Body]()
    last = None
    async with aconnect_sse(http, "POST", "/chat/completions", json=body) as source:
        assert source.response.status_code == 200
        async for event in source.aiter_sse():
            last = event.data
            if event.data == "[DONE]":
                continue
            chunk = json.loads(event.data)
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
                calls += choice["delta"].get("tool_calls") or []
                if choice["finish_reason"]:
                    finishes.append(choice["finish_reason"])
    assert last == "[DONE]"
    return text, finishes, calls


async def test_openwebui_default_chat_with_all_builtin_tools(owui_http: httpx.AsyncClient) -> None:
    """The default chat: native function calling with every built-in tool and no tool_choice.
    Their definitions take about 15,500 tokens of the random model's tokenizer (7,000 with
    SmolLM2's), more than its 2,048-token context: the edge says so, before any stream, as
    OpenAI and vLLM do, once it has accepted all 36 schemas."""
    assert len(BUILTIN_TOOLS) == 36
    names = {t["function"]["name"] for t in BUILTIN_TOOLS}
    assert {"get_current_timestamp", "search_chats", "write_note", "add_memory"} <= names
    chat = OpenWebUIChat(MAIN_MODEL, "Hello! What can you do for me today?")
    resp = await owui_http.post("/chat/completions", json=chat.chat_form(builtin_tools()))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages", error
    assert "2048" in error["message"], error


async def test_openwebui_chat_with_builtin_tools_streams_an_answer(owui_http: httpx.AsyncClient) -> None:
    """The same chat for a model whose Builtin Tools settings leave the Time tools on (what
    fits the random model's context), with temperature 0 set in Chat Controls; sent as a direct
    connection sends it (Open WebUI's `metadata` included) and as a server-side connection does:
    the same answer, streamed."""
    chat = OpenWebUIChat(MAIN_MODEL, "What time is it?")
    form = chat.chat_form(builtin_tools("time"), temperature=0)
    assert [t["function"]["name"] for t in form["tools"]] == ["get_current_timestamp", "calculate_timestamp"]
    assert "tool_choice" not in form
    text, finishes, calls = await stream_chat(owui_http, form)
    assert finishes in (["stop"], ["length"], ["tool_calls"])
    assert text or calls
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in form["tools"]}
    assert all(c["function"]["name"] in schemas for c in calls if c.get("id"))
    assert await stream_chat(owui_http, upstream(form)) == (text, finishes, calls)


async def test_openwebui_task_calls_leave_no_conversation(
    owui_http: httpx.AsyncClient, owui_account: Account
) -> None:
    """Follow-ups, title and tags (Open WebUI's background tasks, without `store`, as direct
    and as server-side connections send them) answer, and leave no conversation in history:
    a stored call made after them shows up alone."""
    chat = OpenWebUIChat(MAIN_MODEL, "How do I bake chocolate chip cookies?")
    answer = "Cream butter and sugar, add eggs, flour and chips, then bake at 180 C for 10 minutes."
    forms = [chat.follow_up_form(answer), chat.title_form(), chat.tags_form(answer)]
    assert forms[1]["max_tokens"] == 1000 and all("store" not in f for f in forms)
    assert '{ "title": "your concise title here" }' in forms[1]["messages"][0]["content"]
    assert f"USER: {chat.question}\nASSISTANT: {answer}" in forms[2]["messages"][0]["content"]
    for form in forms:
        for body in (form, upstream(form)):
            assert body["stream"] is False
            resp = await owui_http.post("/chat/completions", json=body)
            assert resp.status_code == 200, resp.text
            assert "x-conversation-id" not in resp.headers
            completion = resp.json()
            assert completion["conversation_id"] is None
            choice = completion["choices"][0]
            assert isinstance(choice["message"]["content"], str)
            assert choice["finish_reason"] in ("stop", "length")

    stored = await owui_http.post(
        "/chat/completions",
        json={
            "model": MAIN_MODEL,
            "messages": [{"role": "user", "content": "Keep me."}],
            "max_tokens": 2,
            "store": True,
        },
    )
    cid = stored.headers["x-conversation-id"]

    async def listed() -> list[str] | None:
        page = (await owui_http.get("/conversations", params={"limit": 100})).json()
        ids = [c["id"] for c in page["data"]]
        return ids if cid in ids else None

    # History projects events in order: once the last call's conversation is there, anything
    # the task calls had made would be too.
    assert await eventually(listed, timeout=30, what="the stored conversation") == [cid]


async def test_openwebui_image_attachment_is_refused_by_name(owui_http: httpx.AsyncClient) -> None:
    """Open WebUI sends an attached image as an `image_url` part (inlined as a data URL); the
    text-only model refuses it naming the message and what the model reads."""
    chat = OpenWebUIChat(MAIN_MODEL, "What is in this picture?")
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
    form = {
        **chat.chat_form(builtin_tools("time"), temperature=0),
        "messages": [image_message(chat.question, png)],
    }
    for body in (form, upstream(form)):
        resp = await owui_http.post("/chat/completions", json=body)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == "messages.0.content", error
        assert "reads text only" in error["message"] and "image_url" in error["message"], error
