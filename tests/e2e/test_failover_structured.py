"""Failover of answers that cannot continue where they stopped: a worker SIGKILLed in the middle
of a forced tool call (streamed, `required` and a named tool) or of a `json_schema` answer
(streamed and not). Constrained decoding would start its grammar over in the middle of the JSON,
so the next worker of the pool publishes a `reset` and starts the answer over; with greedy
sampling it writes the same answer again, and the client ends with the uninterrupted run's calls
or JSON (valid for their schemas), never a repeat of text it was sent. The request has one usage
row (the reset attempt's tokens, counted once) and one answer in its conversation.

Responses API streams ride the same kills: their clients cannot take text back, so a plain
response goes on from the stored tokens, and a `json_schema` one fails (`worker_lost`) holding the
text it had shown, instead of starting over."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
import httpx
import jsonschema
import openai
import pytest
from openai import AsyncOpenAI

from llmchat_common import subjects
from llmchat_common.contracts import TERMINAL_TYPES, Completed, Delta, Reset, Started, parse_event
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.stack import LocalStack
from tests.conftest import FAILOVER_MODEL, MAIN_MODEL
from tests.e2e.test_failover import (  # noqa: F401 - `workers` is a fixture
    drain,
    first_content,
    start_b,
    stored_rows,
    stream_id,
    workers,
)
from tests.helpers import connect_nats, eventually, read_request_events

# Free words (letters only, so every string the grammar allows is valid JSON): the random model
# writes long ones, i.e. seconds of generation under constrained decoding, and the kill lands
# mid-answer. The lengths below are those of the uninterrupted runs (greedy), checked by
# `reference` so that a change of model or engine shows there, not as a kill that came late.
WORD: dict[str, Any] = {"type": "string", "pattern": "^[a-z]+$"}


def strict_object(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }


# ~450 tokens for a named call, ~800 (two calls) for `required`.
NOTE = strict_object({"a": WORD, "b": WORD, "c": WORD})
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "record", "description": "Record a note", "parameters": NOTE},
    }
]
NAMED: Any = {"type": "function", "function": {"name": "record"}}
TAKE_NOTE: list[Any] = [{"role": "user", "content": "Take a note."}]
# ~1300 tokens of JSON (the streamed answer), ~500 (the whole one).
OKS = strict_object({"oks": {"type": "array", "items": {"enum": ["ok"]}, "minItems": 100, "maxItems": 100}})
FOUR_WORDS = strict_object({name: WORD for name in "abcd"})
MIN_TOKENS = 200  # an uninterrupted answer shorter than this would make the kill a race
TRIES = 3  # of each kill, when an answer ended before it (see `EventWatcher.mid_answer`)


def json_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "note", "schema": schema, "strict": True}}


STORE = {"store": True}
TOOL_CALL: dict[str, Any] = {"messages": TAKE_NOTE, "tools": TOOLS, "temperature": 0, "max_tokens": 1400}
JSON_ANSWER: dict[str, Any] = {"messages": TAKE_NOTE, "temperature": 0, "max_tokens": 1800}
TOOL_RESET = "tool calling"
FORMAT_RESET = "structured output"


class EventWatcher:
    """Every event of every request, live: the kill waits until each answer it must interrupt
    has generated text (stored deltas, so the next attempt has something to start over from)
    and none has ended."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def open(self, env: Mapping[str, str]) -> None:
        self._nc = await connect_nats(env)

        async def on_msg(msg: Any) -> None:
            self.seen.append(parse_event(msg.data))

        await self._nc.subscribe(subjects.events_wildcard(), cb=on_msg)

    async def first_attempts_on(self, worker_id: str, count: int, besides: Iterable[str] = ()) -> list[str]:
        """The requests whose first attempt started on `worker_id` (other than `besides`), once
        there are `count`."""
        skipped = set(besides)

        async def enough() -> list[str] | None:
            found = [
                e.request_id
                for e in self.seen
                if isinstance(e, Started)
                and e.worker_id == worker_id
                and e.attempt == 1
                and e.request_id not in skipped
            ]
            return found if len(found) >= count else None

        return await eventually(enough, timeout=120, what=f"{count} request(s) started on {worker_id}")

    async def mid_answer(self, request_ids: Iterable[str], worker_id: str) -> bool:
        """True once every request generates text on `worker_id`, none having ended; False if
        one ended first. That try cannot test a kill mid-answer (on a loaded machine the long
        answer can end while the other's grammar is still being compiled, seen in CI) and is
        run again."""
        wanted = set(request_ids)

        async def generating() -> str | None:
            ended = {e.request_id for e in self.seen if e.type in TERMINAL_TYPES}
            if ended & wanted:
                return "ended"
            writing = {
                e.request_id
                for e in self.seen
                if isinstance(e, Delta) and e.worker_id == worker_id and e.attempt == 1 and e.text
            }
            return "writing" if wanted <= writing else None

        found = await eventually(generating, timeout=120, what=f"{sorted(wanted)} to generate on {worker_id}")
        return found == "writing"

    async def close(self) -> None:
        await self._nc.close()


async def reference(completions: Any, **kwargs: Any) -> Any:
    """The uninterrupted run of the same request, on the main pool (same model, same engine)."""
    answer = await completions.create(model=MAIN_MODEL, **kwargs)
    assert answer.usage.completion_tokens >= MIN_TOKENS, answer.usage
    assert answer.choices[0].finish_reason in ("stop", "tool_calls"), answer.choices[0]
    return answer


async def read_all(stream: Any) -> list[Any]:
    return [event async for event in stream]


def calls_of(message: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def check_calls(calls: list[tuple[str, str]]) -> None:
    assert calls
    for name, arguments in calls:
        assert name == "record"
        jsonschema.validate(json.loads(arguments), NOTE)


async def read_tool_stream(stream: Any) -> dict[str, Any]:
    """A streamed answer's calls (by index: id, name, arguments), content, finish and usage."""
    calls: dict[int, dict[str, str]] = {}
    content, finish, usage = "", None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    assert not entry["id"], "a call's id comes once, in its first chunk"
                    entry["id"] = delta.id
                if delta.function and delta.function.name:
                    entry["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    entry["arguments"] += delta.function.arguments
    return {
        "calls": [calls[i] for i in sorted(calls)],
        "content": content,
        "finish": finish,
        "usage": usage,
    }


def assert_started_over(events: list[Any], *, killed: str, successor: str, reason: str) -> Completed:
    """The first attempt generated text on the killed worker and ended with it; the second
    reset the answer (for `reason`) and started it over on the successor, whose terminal event
    is the request's only one."""
    assert {e.attempt for e in events} == {1, 2}, [(e.type, e.attempt) for e in events]
    first = [e for e in events if e.attempt == 1]
    assert first[0].type == "started" and first[0].worker_id == killed
    assert any(isinstance(e, Delta) and e.text for e in first)
    assert not [e for e in first if e.type in TERMINAL_TYPES]
    second = [e for e in events if e.attempt == 2]
    # The attempt's claim first (`fencing`), then why it starts over.
    assert [e.type for e in second][:2] == ["started", "reset"], [e.type for e in second]
    started, reset = second[0], second[1]
    assert isinstance(reset, Reset) and reset.reason.startswith(reason), reset.reason
    assert isinstance(started, Started) and started.worker_id == successor
    assert started.resumed_tokens == 0 and started.resumed_chars == 0
    terminals = [e for e in events if e.type in TERMINAL_TYPES]
    assert len(terminals) == 1 and isinstance(terminals[0], Completed), terminals
    assert terminals[0].attempt == 2 and terminals[0].worker_id == successor
    return terminals[0]


async def usage_row(stack: LocalStack, request_id: str) -> asyncpg.Record:
    """The request's one usage row (and its one answer in history)."""
    assert await stored_rows(stack, request_id) == (1, 1)
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        rows = await conn.fetch(
            "SELECT status, completion_tokens, attempts, worker_id FROM usage.requests WHERE request_id = $1",
            request_id,
        )
    finally:
        await conn.close()
    assert len(rows) == 1
    row: asyncpg.Record = rows[0]
    return row


async def stored_answer(edge_url: str, api_key: str, conversation_id: str) -> dict[str, Any]:
    """The assistant message of a one-turn conversation, through the edge's history API."""

    async def both() -> list[dict[str, Any]] | None:
        async with httpx.AsyncClient(base_url=edge_url, timeout=10) as http:
            resp = await http.get(
                f"/v1/conversations/{conversation_id}", headers={"Authorization": f"Bearer {api_key}"}
            )
        messages: list[dict[str, Any]] = resp.json().get("messages", []) if resp.status_code == 200 else []
        return messages if len(messages) >= 2 else None

    messages = await eventually(both, timeout=30, what=f"the answer of {conversation_id} in history")
    assert [m["role"] for m in messages] == ["user", "assistant"], messages
    answer: dict[str, Any] = messages[1]
    assert answer["status"] == "completed"
    return answer


# Three worker starts (~1 min each on two shared cores) and the session's own setup.
@pytest.mark.timeout(900)
async def test_sigkill_mid_tool_call_and_mid_json_answer_start_over(
    edge_url: str,
    api_key: str,
    stack: LocalStack,
    models_dir: Any,
    workers: list[ManagedProcess],  # noqa: F811 - the fixture imported above
) -> None:
    nats_env = stack.env()
    client = AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=600)
    completions: Any = client.chat.completions

    # The uninterrupted answers first, while the main pool has nothing else to do (the titles
    # of the conversations below are asked of it too).
    required_ref = await reference(completions, tool_choice="required", **TOOL_CALL)
    named_ref = await reference(completions, tool_choice=NAMED, **TOOL_CALL)
    oks_ref = await reference(completions, response_format=json_format(OKS), **JSON_ANSWER)
    words_ref = await reference(completions, response_format=json_format(FOUR_WORDS), **JSON_ANSWER)
    for answer in (required_ref, named_ref):
        check_calls(calls_of(answer.choices[0].message))
    oks_json = oks_ref.choices[0].message.content
    words_json = words_ref.choices[0].message.content
    jsonschema.validate(json.loads(oks_json), OKS)
    jsonschema.validate(json.loads(words_json), FOUR_WORDS)

    watcher = EventWatcher()
    await watcher.open(nats_env)
    s1 = start_b(stack, models_dir, "worker-s1", workers)

    # -- Two streamed tool calls (`required`, a named tool) on one worker, SIGKILLed while both
    # are writing their calls. --------------------------------------------------------------
    void: set[str] = set()  # the requests of tries in which an answer ended before the kill
    for _ in range(TRIES):
        streams = {
            name: await completions.create(
                model=FAILOVER_MODEL,
                tool_choice=choice,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=STORE,
                **TOOL_CALL,
            )
            for name, choice in (("required", "required"), ("named", NAMED))
        }
        ids = {name: stream_id(stream) for name, stream in streams.items()}
        # A plain answer through the Responses API, streamed: it goes on from the stored tokens.
        plain_stream = await client.responses.create(
            model=FAILOVER_MODEL,
            input="Tell me about the harbour.",
            temperature=0,
            max_output_tokens=1400,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        plain_id = stream_id(plain_stream)
        plain_events = asyncio.create_task(read_all(plain_stream))
        wanted = {*ids.values(), plain_id}
        assert set(await watcher.first_attempts_on("worker-s1", 3, besides=void)) == wanted
        if await watcher.mid_answer(wanted, "worker-s1"):
            break
        for stream in streams.values():
            await stream.close()  # the client leaves: the answer still running is cancelled
        await plain_stream.close()
        plain_events.cancel()
        with contextlib.suppress(asyncio.CancelledError, openai.APIError):
            await plain_events
        void |= wanted
    else:
        pytest.fail(f"an answer ended before the kill in each of {TRIES} tries")
    s1.kill()  # SIGKILL to the worker and its engine processes at once
    reading = {name: asyncio.create_task(read_tool_stream(stream)) for name, stream in streams.items()}
    # Started off the event loop: the streams are read (and the watcher hears) meanwhile.
    s2 = await asyncio.to_thread(start_b, stack, models_dir, "worker-s2", workers)
    got = {name: await asyncio.wait_for(task, timeout=300) for name, task in reading.items()}

    for name, ref in (("required", required_ref), ("named", named_ref)):
        streamed, request_id = got[name], ids[name]
        # The client ends with the uninterrupted run's calls: valid, whole, each once.
        calls = [(c["name"], c["arguments"]) for c in streamed["calls"]]
        assert calls == calls_of(ref.choices[0].message), name
        check_calls(calls)
        assert streamed["content"] == ""
        assert streamed["finish"] == ref.choices[0].finish_reason
        assert streamed["usage"].completion_tokens == ref.usage.completion_tokens
        events = await read_request_events(nats_env, request_id)
        terminal = assert_started_over(events, killed="worker-s1", successor="worker-s2", reason=TOOL_RESET)
        assert [c.id for c in terminal.tool_calls] == [c["id"] for c in streamed["calls"]]
        # One usage row: the reset attempt's tokens, counted once.
        row = await usage_row(stack, request_id)
        assert (row["status"], row["attempts"], row["worker_id"]) == ("completed", 2, "worker-s2")
        assert row["completion_tokens"] == ref.usage.completion_tokens
        conversation_id = streams[name].response.headers["x-conversation-id"]
        answer = await stored_answer(edge_url, api_key, conversation_id)
        assert answer["content"] is None
        stored = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in answer["tool_calls"]]
        assert stored == [(c["id"], c["name"], c["arguments"]) for c in streamed["calls"]]

    # The streamed response went on where it stopped: the text its client was shown is the
    # response's, none of it twice.
    plain: list[Any] = await asyncio.wait_for(plain_events, timeout=300)
    assert [e.sequence_number for e in plain] == list(range(len(plain)))
    assert plain[-1].type == "response.incomplete"  # max_output_tokens, as asked
    plain_text = "".join(e.delta for e in plain if e.type == "response.output_text.delta")
    assert plain_text and plain_text == plain[-1].response.output_text
    resumed = [
        e for e in await read_request_events(nats_env, plain_id) if isinstance(e, Started) and e.attempt == 2
    ]
    assert len(resumed) == 1 and resumed[0].resumed_tokens > 0 and resumed[0].worker_id == "worker-s2"
    row = await usage_row(stack, plain_id)
    assert (row["status"], row["attempts"], row["completion_tokens"]) == ("completed", 2, 1400)

    # -- Two json_schema answers on the next worker, one streamed (its client has been shown
    # the start of the JSON) and one whole, SIGKILLed mid-answer. The long one (~1300 tokens)
    # starts first and the short one (~500) once it streams, so both still run when the short
    # one has text (the other way round, the short one could end while the long one's grammar
    # was still being compiled). ------------------------------------------------------------
    for _ in range(TRIES):
        stream = await completions.create(
            model=FAILOVER_MODEL,
            response_format=json_format(OKS),
            stream=True,
            stream_options={"include_usage": True},
            extra_body=STORE,
            **JSON_ANSWER,
        )
        shown, stream = await first_content(stream)
        # The same JSON answer through the Responses API, streamed: it cannot start over.
        response_stream = await client.responses.create(
            model=FAILOVER_MODEL,
            input=TAKE_NOTE,
            text={"format": {"type": "json_schema", "name": "note", "schema": FOUR_WORDS, "strict": True}},
            temperature=0,
            max_output_tokens=JSON_ANSWER["max_tokens"],
            stream=True,
        )
        response_events = asyncio.create_task(read_all(response_stream))
        whole = asyncio.create_task(
            completions.create(
                model=FAILOVER_MODEL, response_format=json_format(FOUR_WORDS), extra_body=STORE, **JSON_ANSWER
            )
        )
        started = await watcher.first_attempts_on("worker-s2", 3, besides=void)
        assert started[:2] == [stream_id(stream), stream_id(response_stream)]
        response_id, whole_id = started[1:]
        if await watcher.mid_answer(started, "worker-s2"):
            break
        await stream.close()
        await response_stream.close()
        for task in (whole, response_events):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, openai.APIError):
                await task
        void |= set(started)
    else:
        pytest.fail(f"an answer ended before the kill in each of {TRIES} tries")
    s2.kill()
    assert not whole.done()
    streamed_rest = asyncio.create_task(drain(stream))
    await asyncio.to_thread(start_b, stack, models_dir, "worker-s3", workers)
    rest = await asyncio.wait_for(streamed_rest, timeout=300)
    # The text the client was shown is not sent again; the JSON is the uninterrupted one.
    assert shown + rest == oks_json
    jsonschema.validate(json.loads(shown + rest), OKS)
    answer = await asyncio.wait_for(whole, timeout=300)
    assert answer.id == whole_id
    assert answer.choices[0].message.content == words_json
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == words_ref.usage.completion_tokens
    jsonschema.validate(json.loads(answer.choices[0].message.content), FOUR_WORDS)

    # The response fails instead (Responses API clients cannot take text back), holding the
    # text its client was shown; retrieved, it is the same response.
    seen: list[Any] = await asyncio.wait_for(response_events, timeout=300)
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    assert seen[-1].type == "response.failed"
    failed = seen[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert (failed.error.model_extra or {})["llmchat_code"] == "worker_lost"
    text_shown = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert text_shown and failed.output_text == text_shown and words_json.startswith(text_shown)
    assert (await client.responses.retrieve(response_id)).model_dump() == failed.model_dump()
    assert not [e for e in await read_request_events(nats_env, response_id) if isinstance(e, Reset)]
    row = await usage_row(stack, response_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("failed", 2, "worker-s3")

    for request_id, ref, conversation_id in (
        (stream_id(stream), oks_ref, stream.response.headers["x-conversation-id"]),
        (whole_id, words_ref, (answer.model_extra or {})["conversation_id"]),
    ):
        events = await read_request_events(nats_env, request_id)
        terminal = assert_started_over(events, killed="worker-s2", successor="worker-s3", reason=FORMAT_RESET)
        assert terminal.text == ref.choices[0].message.content
        row = await usage_row(stack, request_id)
        assert (row["status"], row["attempts"], row["worker_id"]) == ("completed", 2, "worker-s3")
        assert row["completion_tokens"] == ref.usage.completion_tokens
        kept = await stored_answer(edge_url, api_key, conversation_id)
        assert kept["content"] == ref.choices[0].message.content and not kept["tool_calls"]
    await watcher.close()
