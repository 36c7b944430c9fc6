"""The Responses API through the official `openai` SDK (and the Agents SDK on its default,
Responses model), against the whole platform on the random test model: create (whole, streamed,
background), retrieve (also as a stream resumed with `starting_after` after a cut), cancel,
delete, input items, a `previous_response_id` chain, forced function calls and JSON output;
each response counted once (kind `response`) and kept as a conversation in history. Bad input
is a 4xx naming its field."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal

import asyncpg
import httpx
import jsonschema
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI
from pydantic import BaseModel

from llmchat_common.forgetting import forget_requests
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL, ROOMY_LIMITS
from tests.e2e.test_failover import stored_rows
from tests.helpers import connect_nats, eventually

GREEDY: dict[str, Any] = {"model": MAIN_MODEL, "temperature": 0}
WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "London"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather",
        "parameters": WEATHER,
        "strict": True,
    }
]


@pytest.fixture
async def client(edge_url: str, api_key: str) -> Any:
    async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=120) as c:
        yield c


async def usage_rows(stack: LocalStack, response_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        return list(
            await conn.fetch(
                "SELECT kind, status, completion_tokens FROM usage.requests WHERE request_id = $1",
                response_id,
            )
        )
    finally:
        await conn.close()


async def conversation(edge_url: str, api_key: str, cid: str, messages: int) -> list[dict[str, Any]]:
    async def stored() -> list[dict[str, Any]] | None:
        async with httpx.AsyncClient(base_url=edge_url, timeout=10) as http:
            resp = await http.get(f"/v1/conversations/{cid}", headers={"Authorization": f"Bearer {api_key}"})
        found: list[dict[str, Any]] = resp.json().get("messages", []) if resp.status_code == 200 else []
        return found if len(found) >= messages else None

    return await eventually(stored, timeout=30, what=f"{messages} messages in conversation {cid}")


async def test_create_retrieve_and_input_items(
    client: AsyncOpenAI, stack: LocalStack, edge_url: str, api_key: str
) -> None:
    raw = await client.responses.with_raw_response.create(
        input="Hello there",
        instructions="Be brief.",
        max_output_tokens=16,
        metadata={"case": "plain"},
        **GREEDY,
    )
    response = raw.parse()
    assert response.id.startswith("resp_") and raw.headers["x-request-id"] == response.id
    assert response.object == "response" and response.model == MAIN_MODEL
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.instructions == "Be brief." and response.metadata == {"case": "plain"}
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    assert response.store is True and response.background is False

    again = await client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()
    items = await client.responses.input_items.list(response.id)
    dumped = [i.model_dump() for i in items.data]
    assert [(i["type"], i["role"], i["content"][0]["text"]) for i in dumped] == [
        ("message", "user", "Hello there")
    ]

    # Counted once, as a response; kept as a turn of a conversation.
    assert await stored_rows(stack, response.id) == (1, 1)
    [row] = await usage_rows(stack, response.id)
    assert row["kind"] == "response" and row["completion_tokens"] == response.usage.output_tokens
    messages = await conversation(edge_url, api_key, raw.headers["x-conversation-id"], 2)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Hello there" and messages[1]["content"] == response.output_text


async def test_stream_follows_openai_event_order_and_ends_with_the_stored_response(
    client: AsyncOpenAI,
) -> None:
    stream = await client.responses.create(
        input="Tell me a story", max_output_tokens=40, stream=True, **GREEDY
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text and text
    assert (await client.responses.retrieve(final.id)).model_dump() == final.model_dump()


async def first_events(client: AsyncOpenAI, response_id: str, count: int = 6) -> tuple[list[Any], Any]:
    """The first `count` events of a response's stream, and the stream (still open)."""
    events: list[Any] = []
    stream = await client.responses.retrieve(response_id, stream=True)
    async for event in stream:
        events.append(event)
        if len(events) == count:
            break
    return events, stream


async def test_background_response_resumes_after_a_cut_stream(client: AsyncOpenAI) -> None:
    queued = await client.responses.create(
        input="Write at length", max_output_tokens=300, background=True, **GREEDY
    )
    assert queued.status == "queued" and queued.background is True

    # A client reads a few events, loses its connection, and resumes after the last it saw.
    first, cut = await first_events(client, queued.id)
    await cut.close()
    rest = [
        e
        async for e in await client.responses.retrieve(
            queued.id, stream=True, starting_after=first[-1].sequence_number
        )
    ]
    events = first + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = await client.responses.retrieve(queued.id)
    assert text == final.output_text and final.status in ("completed", "incomplete")
    # The whole stream again, from the log: the same events.
    replay = [e async for e in await client.responses.retrieve(queued.id, stream=True)]
    assert [e.model_dump() for e in replay] == [e.model_dump() for e in events]

    with pytest.raises(openai.BadRequestError) as past_end:
        await client.responses.retrieve(queued.id, stream=True, starting_after=len(events) - 1)
    assert past_end.value.body["param"] == "starting_after"  # type: ignore[index]


@pytest.mark.timeout(300)
async def test_a_background_stream_resumes_at_another_edge_after_sigkill(
    client: AsyncOpenAI, stack: LocalStack, api_key: str
) -> None:
    """The edge that took the response and served its stream dies (SIGKILL); the client resumes
    at another edge with `starting_after` and gets the rest, once (followed live or read from the
    log, whichever it has come to: tiny-random may finish 1,500 tokens by then)."""
    first_edge, port = start_edge(stack, models=[MAIN_MODEL], extra_env=ROOMY_LIMITS, name="chat-doomed")
    try:
        async with AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0, timeout=60
        ) as doomed:
            queued = await doomed.responses.create(
                input="Write at length",
                max_output_tokens=1500,
                background=True,
                extra_body={"ignore_eos": True},
                **GREEDY,
            )
            seen, stream = await first_events(doomed, queued.id)
            first_edge.kill()
            with contextlib.suppress(Exception):
                await stream.close()
        rest = [
            e
            async for e in await client.responses.retrieve(
                queued.id, stream=True, starting_after=seen[-1].sequence_number
            )
        ]
    finally:
        first_edge.stop()
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = await client.responses.retrieve(queued.id)
    assert text == final.output_text and final.status in ("completed", "incomplete")


async def test_cancel_a_background_response_twice(client: AsyncOpenAI, stack: LocalStack) -> None:
    # tiny-random writes 1,800 tokens in a few seconds: under load a try's answer can end before
    # its cancel arrives. Such a try is void (its cancel returns the ended response as it is).
    for _ in range(6):
        queued = await client.responses.create(
            input="Go on and on",
            max_output_tokens=1800,
            background=True,
            extra_body={"ignore_eos": True},
            **GREEDY,
        )

        async def running(response_id: str = queued.id) -> bool:
            return (await client.responses.retrieve(response_id)).status != "queued"

        await eventually(running, timeout=60, what="the response to start")
        cancelled = await client.responses.cancel(queued.id)
        if cancelled.status == "incomplete":
            assert (await client.responses.cancel(queued.id)).status == "incomplete"
            continue
        assert cancelled.status == "cancelled"
        assert (await client.responses.cancel(queued.id)).status == "cancelled"  # idempotent
        [row] = await usage_rows(stack, queued.id)
        assert row["status"] == "cancelled" and row["kind"] == "response"
        break
    else:
        pytest.fail("every try's answer ended before its cancel")

    plain = await client.responses.create(input="Hi", max_output_tokens=4, **GREEDY)
    with pytest.raises(openai.BadRequestError):
        await client.responses.cancel(plain.id)


async def test_previous_response_id_continues_one_conversation(
    client: AsyncOpenAI, edge_url: str, api_key: str
) -> None:
    first_raw = await client.responses.with_raw_response.create(
        input="My name is Ada.", max_output_tokens=12, **GREEDY
    )
    first = first_raw.parse()
    second_raw = await client.responses.with_raw_response.create(
        input="What is my name?", previous_response_id=first.id, max_output_tokens=12, **GREEDY
    )
    second = second_raw.parse()
    assert second.previous_response_id == first.id
    cid = first_raw.headers["x-conversation-id"]
    assert second_raw.headers["x-conversation-id"] == cid
    # The model read the first exchange: its prompt holds the first prompt and answer.
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    messages = await conversation(edge_url, api_key, cid, 4)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "My name is Ada."),
        ("assistant", first.output_text),
        ("user", "What is my name?"),
        ("assistant", second.output_text),
    ]


async def test_forced_function_call_then_its_output(client: AsyncOpenAI) -> None:
    called = await client.responses.create(
        input="Is it sunny in Paris?",
        tools=TOOLS,
        tool_choice="required",
        # One call: left free, the random model writes call after call until the limit cuts it.
        parallel_tool_calls=False,
        max_output_tokens=600,
        **GREEDY,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and called.status == "completed", called.output
    for call in calls:
        assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), WEATHER)
    answered = await client.responses.create(
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls],
        tools=TOOLS,
        tool_choice="none",
        max_output_tokens=8,
        **GREEDY,
    )
    assert answered.status in ("completed", "incomplete") and answered.output_text
    items = await client.responses.input_items.list(answered.id, order="asc")
    assert [(i.type, i.call_id) for i in items.data] == [("function_call_output", c.call_id) for c in calls]  # type: ignore[union-attr]


async def test_json_schema_text_format(client: AsyncOpenAI) -> None:
    response = await client.responses.create(
        input="Weather?",
        text={"format": {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}},
        max_output_tokens=100,
        **GREEDY,
    )
    jsonschema.validate(json.loads(response.output_text), WEATHER)
    assert response.text is not None and response.text.format.type == "json_schema"


async def test_bad_input_names_its_field(client: AsyncOpenAI) -> None:
    async def refused(error: type[openai.APIStatusError], **kwargs: Any) -> str | None:
        with pytest.raises(error) as caught:
            await client.responses.create(**{"input": "Hi", "max_output_tokens": 4, **GREEDY, **kwargs})
        body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
        assert body["message"]
        param: str | None = body["param"]
        return param

    assert await refused(openai.NotFoundError, previous_response_id="resp_nope") == "previous_response_id"
    assert await refused(openai.BadRequestError, tools=[{"type": "web_search"}]) == "tools.0.type"
    bad_input: Any = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]
    assert await refused(openai.BadRequestError, input=bad_input) == "input.0.content.0.type"
    assert await refused(openai.BadRequestError, tool_choice="required") == "tool_choice"
    assert await refused(openai.BadRequestError, extra_body={"conversation": "conv_1"}) == "conversation"

    unstored = await client.responses.create(input="Hi", max_output_tokens=4, store=False, **GREEDY)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    stored = await client.responses.create(input="Hi", max_output_tokens=4, **GREEDY)
    with pytest.raises(openai.BadRequestError) as not_background:
        await client.responses.retrieve(stored.id, stream=True)
    assert not_background.value.body["param"] == "stream"  # type: ignore[index]
    await client.responses.delete(stored.id)

    async def forgotten() -> bool:
        # Deleting waits a while for the history service's eraser; under load it may finish
        # just after (the erasure is queued either way).
        try:
            await client.responses.retrieve(stored.id)
        except openai.NotFoundError:
            return True
        return False

    await eventually(forgotten, timeout=60, what="the deleted response to be gone")
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(stored.id)


async def test_a_response_outlives_its_events_in_the_log(
    client: AsyncOpenAI, stack: LocalStack, edge_url: str, api_key: str
) -> None:
    """Past the event log's retention (here: its events erased from the log), a stored response
    is still retrieved, streamed and continued, from the history service's copy."""
    raw = await client.responses.with_raw_response.create(
        input="Remember the number 7.", max_output_tokens=8, **GREEDY
    )
    first = raw.parse()

    async def kept() -> bool:
        conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
        try:
            return bool(
                await conn.fetchval("SELECT count(*) FROM history.responses WHERE request_id = $1", first.id)
            )
        finally:
            await conn.close()

    await eventually(kept, timeout=30, what="the response in history")
    nc = await connect_nats(stack.env())
    try:
        assert await forget_requests(nc, [first.id]) == 1
    finally:
        await nc.close()
    assert (await client.responses.retrieve(first.id)).model_dump() == first.model_dump()
    second = await client.responses.create(
        input="Which number?", previous_response_id=first.id, max_output_tokens=8, **GREEDY
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # The conversation goes (the log no longer has its first turn: a replay could not rebuild it).
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=edge_url, timeout=10, headers=headers) as http:
        deleted = await http.delete(f"/v1/conversations/{raw.headers['x-conversation-id']}")
    assert deleted.status_code == 200, deleted.text


class Verdict(BaseModel):
    city: Literal["Paris", "London"]
    sunny: bool


async def test_agents_sdk_on_its_default_responses_model(edge_url: str, api_key: str) -> None:
    set_tracing_disabled(True)  # nothing to export to (no internet)
    calls: list[tuple[str, str]] = []

    @function_tool
    def get_weather(city: Literal["Paris", "London"], unit: Literal["celsius", "fahrenheit"]) -> str:
        """The weather in a city."""
        calls.append((city, unit))
        return "sunny, 21 degrees"

    async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0) as client:
        agent = Agent(
            name="forecaster",
            instructions="Look up the weather, then give your verdict.",
            model=OpenAIResponsesModel(model=MAIN_MODEL, openai_client=client),
            tools=[get_weather],
            model_settings=ModelSettings(
                tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=600
            ),
            output_type=Verdict,
        )
        result = await Runner.run(agent, "Is it sunny in Paris?", max_turns=4)
    assert isinstance(result.final_output, Verdict)
    assert len(calls) == 1
    assert calls[0][0] in ("Paris", "London") and calls[0][1] in ("celsius", "fahrenheit")


async def test_agents_sdk_streamed_run_with_a_tool(edge_url: str, api_key: str) -> None:
    """`Runner.run_streamed` reads the Responses stream itself: the tool's call arrives as
    function-call events, and the answer's text deltas (JSON of its output type: the random
    model's free text would run to the token limit, which the SDK refuses in a stream) make its
    final output."""
    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def lookup(city: Literal["Paris", "London"]) -> str:
        """Facts about a city."""
        calls.append(city)
        return "a harbour"

    async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0) as client:
        agent = Agent(
            name="guide",
            instructions="Look the city up, then answer.",
            model=OpenAIResponsesModel(model=MAIN_MODEL, openai_client=client),
            tools=[lookup],
            model_settings=ModelSettings(
                tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=600
            ),
            output_type=Verdict,
        )
        result = Runner.run_streamed(agent, "Tell me about Paris.", max_turns=3)
        kinds: list[str] = []
        deltas: list[str] = []
        async for event in result.stream_events():
            if event.type == "raw_response_event":
                kinds.append(event.data.type)
                if event.data.type == "response.output_text.delta":
                    deltas.append(event.data.delta)
    # The first turn's call is forced; with the choice back to `auto` the model may call again.
    assert calls and all(city in ("Paris", "London") for city in calls)
    assert kinds.count("response.function_call_arguments.done") == len(calls)
    assert kinds.count("response.completed") == len(calls) + 1  # a turn per call, then the answer
    assert deltas and result.final_output == Verdict.model_validate_json("".join(deltas))
