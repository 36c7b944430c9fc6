"""History's pure logic: titles, cursors, the Markdown export and the events → rows mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from llmchat_history.mapping import plan_batch
from llmchat_history.rendering import decode_cursor, encode_cursor, export, render_markdown
from llmchat_history.titles import (
    MAX_TITLE_CHARS,
    TITLE_PROMPT_CHARS,
    UNTITLED,
    clean_title,
    fallback_title,
    title_request,
)

from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    Choice,
    Completed,
    Failed,
    FunctionCall,
    Started,
    Timings,
    ToolCall,
    Usage,
)
from llmchat_common.history_contracts import Conversation, Message, MessageUsage
from llmchat_common.projection import StoredEvent
from llmchat_common.rpc import InvalidRequest

T0 = 1_800_000_000.0


def facts(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "request_id": "r1",
        "attempt": 1,
        "seq": 0,
        "worker_id": "w",
        "ts": T0 + 1,
        "user_id": "u1",
        "model": "m",
        "conversation_id": "c1",
        "kind": "chat",
        "trace_id": "t" * 32,
        "created_at": T0,
        "user_message": "hello there",
        "system_prompt": "be brief",
    }
    return {**base, **over}


def started(**over: object) -> Started:
    return Started(queue_ms=1.0, prompt_tokens=3, **facts(**over))  # type: ignore[arg-type]


def completed(text: str = "hi!", finish_reason: str = "stop", **over: Any) -> Completed:
    return Completed(
        finish_reason=finish_reason,
        text=text,
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        timings=Timings(e2e_ms=5.0),
        **facts(**over),  # type: ignore[arg-type]
    )


def stored(event: Started | Completed | Failed | Cancelled, seq: int) -> StoredEvent:
    return StoredEvent(event, seq, event.ts)


# -- titles ---------------------------------------------------------------------------------------
def test_fallback_title_is_the_first_words_on_one_line() -> None:
    assert fallback_title("How do I\nboil   an egg?") == "How do I boil an egg?"
    long = fallback_title("one two three four five six seven eight nine ten")
    assert long == "one two three four five six seven eight…"
    assert fallback_title("   ") == UNTITLED
    assert fallback_title(None) == UNTITLED
    assert len(fallback_title("x" * 500)) <= MAX_TITLE_CHARS


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Boiling Eggs"', "Boiling Eggs"),
        ("Title: Boiling eggs.\nHere is why...", "Boiling eggs"),
        ("\n\n  **Egg timing**  ", "Egg timing"),
        ("\u201cSoft eggs\u201d", "Soft eggs"),
        ("   \n  ", None),
        ('""', None),
    ],
)
def test_clean_title(answer: str, title: str | None) -> None:
    assert clean_title(answer) == title


def test_clean_title_is_bounded() -> None:
    cleaned = clean_title("word " * 100)
    assert cleaned is not None and len(cleaned) <= MAX_TITLE_CHARS and not cleaned.endswith(" ")


def test_title_request_is_background_and_idempotent_by_id() -> None:
    req = title_request(
        conversation_id="c1",
        user_id="u1",
        model="m",
        first_user_message="q" * 5000,
        first_answer="a" * 5000,
        now=T0,
        timeout_s=60,
    )
    assert req.request_id == "title-c1" and req.kind == "title" and req.priority == 10
    assert req.conversation_id == "c1" and req.user_id == "u1" and req.deadline == T0 + 60
    assert req.params.max_tokens == 16 and req.params.temperature == 0.2
    assert [m.role for m in req.messages] == ["system", "user"]
    assert len(req.messages[1].content) <= TITLE_PROMPT_CHARS + 30


# -- cursors --------------------------------------------------------------------------------------
def test_cursor_round_trips_and_is_opaque() -> None:
    at = datetime(2026, 12, 2, 4, 5, 6, 789012, tzinfo=UTC)
    cursor = encode_cursor(at, "c-1")
    assert "c-1" not in cursor and "=" not in cursor
    assert decode_cursor(cursor) == (at, "c-1")


@pytest.mark.parametrize("bad", ["%%%", "bm90IGpzb24", "WzEsMl0", "WyIyMDI2LTAxLTAxIiwgIngiXQ"])
def test_bad_cursor_is_an_invalid_request(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_cursor(bad)


# -- export ---------------------------------------------------------------------------------------
def conversation() -> Conversation:
    at = datetime(2026, 12, 2, tzinfo=UTC)
    return Conversation(
        id="c1",
        title="Eggs",
        title_source="model",
        model="m",
        message_count=4,
        created_at=at,
        updated_at=at,
        system_prompt="be brief",
        messages=[
            Message(request_id="r1", role="user", content="how long?", created_at=at),
            Message(
                request_id="r1",
                role="assistant",
                content="7 minutes",
                model="m",
                finish_reason="stop",
                usage=MessageUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
                created_at=at,
            ),
            Message(request_id="r2", role="user", content="and soft?", created_at=at),
            Message(
                request_id="r2",
                role="assistant",
                content="5 min",
                status="cancelled",
                error="client",
                created_at=at,
            ),
        ],
    )


def test_markdown_has_every_turn_with_status_and_usage() -> None:
    md = render_markdown(conversation())
    assert md.startswith("# Eggs\n")
    assert md.count("## User") == 2 and md.count("## Assistant") == 2
    assert "## Assistant (cancelled: client)" in md
    assert "## System" in md and "be brief" in md
    assert "tokens: 3 prompt + 2 completion" in md and "model: m" in md
    assert md.index("how long?") < md.index("7 minutes") < md.index("and soft?") < md.index("5 min")


def test_json_export_round_trips() -> None:
    conv = conversation()
    exported = export(conv, "json")
    assert exported.media_type == "application/json"
    assert Conversation.model_validate_json(exported.content) == conv
    assert export(conv, "markdown").filename == "conversation-c1.md"


# -- events → rows --------------------------------------------------------------------------------
def test_started_and_terminal_give_one_user_row_and_one_answer() -> None:
    plan = plan_batch([stored(completed(), 7), stored(started(), 5), stored(completed(), 9)])
    assert len(plan.conversations) == 1
    conv = plan.conversations[0]
    assert (conv.id, conv.user_id, conv.title, conv.system_prompt) == ("c1", "u1", "hello there", "be brief")
    users, answers = plan.messages_of({("c1", "u1")})
    assert [(r["role"], r["stream_seq"]) for r in users] == [("user", 5)]  # earliest carrier
    assert [(r["role"], r["status"], r["content"]) for r in answers] == [("assistant", "completed", "hi!")]
    assert answers[0]["prompt_tokens"] == 3 and answers[0]["finish_reason"] == "stop"
    assert users[0]["created_at"] == answers[0]["created_at"] == datetime.fromtimestamp(T0, UTC)
    assert plan.messages_of({("c1", "someone-else")}) == ([], [])


def test_cancelled_and_failed_answers_keep_status_partial_text_and_why() -> None:
    cancelled = Cancelled(reason="client", text="part", usage=Usage(completion_tokens=1), **facts())  # type: ignore[arg-type]
    failed = Failed(code="worker_lost", message="m", text="", **facts(request_id="r2"))  # type: ignore[arg-type]
    _, answers = plan_batch([stored(cancelled, 1), stored(failed, 2)]).messages_of({("c1", "u1")})
    by_id = {a["request_id"]: a for a in answers}
    assert (by_id["r1"]["status"], by_id["r1"]["content"], by_id["r1"]["error"]) == (
        "cancelled",
        "part",
        "client",
    )
    assert (by_id["r2"]["status"], by_id["r2"]["error"], by_id["r2"]["finish_reason"]) == (
        "failed",
        "worker_lost",
        None,
    )


def test_queued_cancel_without_started_still_gives_the_user_turn() -> None:
    cancelled = Cancelled(reason="client", **facts())  # type: ignore[arg-type]
    users, answers = plan_batch([stored(cancelled, 3)]).messages_of({("c1", "u1")})
    assert [u["content"] for u in users] == ["hello there"] and answers[0]["content"] == ""


def test_earliest_request_names_the_conversation_latest_event_dates_it() -> None:
    first = started(request_id="r1", created_at=T0, ts=T0 + 1, user_message="first question", model="a")
    later = completed(request_id="r2", created_at=T0 + 10, ts=T0 + 20, user_message="second", model="b")
    orders: list[list[Started | Completed]] = [[first, later], [later, first]]
    for order in orders:
        plan = plan_batch([stored(e, i) for i, e in enumerate(order)])
        conv = plan.conversations[0]
        assert conv.title == "first question" and conv.model == "b"
        assert conv.created_at == datetime.fromtimestamp(T0, UTC)
        assert conv.updated_at == datetime.fromtimestamp(T0 + 20, UTC)


def test_events_without_conversation_are_ignored_and_title_answers_are_not_messages() -> None:
    loose = completed(conversation_id=None)
    title = completed(text='"Egg Facts"', kind="title", request_id="title-c1", user_message="x")
    failed_title = Failed(code="timeout", message="m", **facts(kind="title", request_id="title-c2"))  # type: ignore[arg-type]
    plan = plan_batch([stored(loose, 1), stored(title, 2), stored(failed_title, 3)])
    assert plan.conversations == [] and plan.messages == {}
    assert [(t.conversation_id, t.title) for t in plan.titles] == [("c1", "Egg Facts")]


def test_two_owners_claiming_one_conversation_are_separate_shares() -> None:
    plan = plan_batch([stored(started(), 1), stored(started(request_id="r2", user_id="u2"), 2)])
    assert [(c.id, c.user_id) for c in plan.conversations] == [("c1", "u1"), ("c1", "u2")]
    users, _ = plan.messages_of({("c1", "u1")})
    assert [u["request_id"] for u in users] == ["r1"]


# -- tool calling ---------------------------------------------------------------------------------
WEATHER = ToolCall(id="call-a", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}'))
TIME = ToolCall(id="call-b", function=FunctionCall(name="clock", arguments="{}"))
MARKUP = '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>'


def calling(**over: object) -> Completed:
    """The answer of a user turn that only calls tools: its text is the tool-call markup."""
    return completed(MARKUP, finish_reason="tool_calls", tool_calls=[WEATHER, TIME], content="", **over)


def tool_turn(**over: object) -> dict[str, Any]:
    """The facts of the next request: the tool answers, no user message."""
    results = [
        ChatMessage(role="tool", content="-3 °C, snow", tool_call_id="call-a"),
        ChatMessage(role="tool", content="14:05", tool_call_id="call-b"),
    ]
    return {
        "request_id": "r2",
        "created_at": T0 + 5,
        "ts": T0 + 6,
        "user_message": None,
        "tool_results": results,
        **over,
    }


def keyed(plan_events: list[StoredEvent]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return plan_batch(plan_events).messages


def test_a_tool_turn_gives_its_tool_results_in_order_and_the_answer() -> None:
    answer = completed("It snows in Oslo; it is 14:05.", **tool_turn())
    rows = keyed(
        [
            stored(started(), 1),
            stored(calling(), 2),
            stored(started(**tool_turn()), 3),
            stored(answer, 4),
        ]
    )
    assert sorted(rows) == [
        ("r1", "assistant", 0),
        ("r1", "user", 0),
        ("r2", "assistant", 0),
        ("r2", "tool", 0),
        ("r2", "tool", 1),
    ]
    call = rows[("r1", "assistant", 0)]
    # content "" (the API shows null) and the calls in OpenAI's shape; the markup is not stored.
    assert call["content"] == "" and call["finish_reason"] == "tool_calls"
    assert call["tool_calls"] == [
        {
            "id": "call-a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        },
        {"id": "call-b", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
    ]
    tools = [rows[("r2", "tool", i)] for i in (0, 1)]
    assert [(t["content"], t["tool_call_id"], t["stream_seq"]) for t in tools] == [
        ("-3 °C, snow", "call-a", 3),  # the earliest carrier: `started`
        ("14:05", "call-b", 3),
    ]
    assert all(t["status"] == "completed" and t["tool_calls"] is None for t in tools)
    final = rows[("r2", "assistant", 0)]
    assert final["content"] == "It snows in Oslo; it is 14:05." and final["tool_calls"] is None
    # Every row of a request has the request's time: the reading order is the repository's
    # (request, then user/tool before the answer, then position).
    assert {r["created_at"] for r in (*tools, final)} == {datetime.fromtimestamp(T0 + 5, UTC)}
    # Every row has every column: one insert statement takes them all.
    assert len({tuple(sorted(r)) for r in rows.values()}) == 1


def test_redelivered_and_reordered_tool_turns_give_the_same_rows() -> None:
    events: list[Started | Completed] = [started(**tool_turn()), completed("done", **tool_turn())]
    once = keyed([stored(e, i) for i, e in enumerate(events, start=10)])
    again = keyed(
        [stored(events[1], 11), stored(events[0], 10), stored(events[1], 11), stored(events[0], 30)]
    )
    assert once == again
    assert sorted(once) == [("r2", "assistant", 0), ("r2", "tool", 0), ("r2", "tool", 1)]
    # A terminal event alone (cancelled while queued) still brings the tool results.
    queued = Cancelled(reason="client", **facts(**tool_turn()))  # type: ignore[arg-type]
    alone = keyed([stored(queued, 7)])
    assert [alone[("r2", "tool", i)]["tool_call_id"] for i in (0, 1)] == ["call-a", "call-b"]
    assert alone[("r2", "assistant", 0)]["status"] == "cancelled"


def test_inputs_and_answers_split_by_role() -> None:
    plan = plan_batch([stored(started(), 1), stored(completed("ok", **tool_turn()), 2)])
    inputs, answers = plan.messages_of({("c1", "u1")})
    assert sorted((r["role"], r["position"]) for r in inputs) == [("tool", 0), ("tool", 1), ("user", 0)]
    assert [(r["request_id"], r["role"]) for r in answers] == [("r2", "assistant")]


def test_a_tool_turn_does_not_name_the_conversation() -> None:
    conv = plan_batch([stored(started(**tool_turn()), 1)]).conversations[0]
    assert conv.title == UNTITLED
    # The earlier user turn does, whichever comes first in the log.
    conv = plan_batch([stored(started(**tool_turn()), 1), stored(started(), 2)]).conversations[0]
    assert conv.title == "hello there"


def test_visible_content_and_choice_zero_are_stored() -> None:
    # The parser's content (markup removed) wins over the raw text; with n > 1 only choice 0,
    # which is the event's own fields, is a message.
    other = Choice(index=1, text="second", finish_reason="stop", content="second")
    event = completed(f"Checking. {MARKUP}", content="Checking.", tool_calls=[WEATHER], choices=[other])
    row = keyed([stored(event, 1)])[("r1", "assistant", 0)]
    assert row["content"] == "Checking." and [c["id"] for c in row["tool_calls"]] == ["call-a"]
    plain = keyed([stored(completed("just text"), 1)])[("r1", "assistant", 0)]
    assert plain["content"] == "just text" and plain["tool_calls"] is None


@pytest.mark.parametrize("kind", ["completion", "embedding"])
def test_only_chat_turns_are_stored(kind: str) -> None:
    plan = plan_batch([stored(started(kind=kind), 1), stored(completed(kind=kind), 2)])
    assert plan.conversations == [] and plan.messages == {} and plan.titles == []


def test_nul_in_tool_results_and_calls_is_replaced() -> None:
    from llmchat_history.mapping import storable

    bad_call = ToolCall(id="c\x00", function=FunctionCall(name="f", arguments='{"a": "\x00"}'))
    event = completed(
        "x",
        tool_calls=[bad_call],
        content="y\x00",
        tool_results=[ChatMessage(role="tool", content="r\x00", tool_call_id="c\x00")],
    )
    clean = storable(event)
    assert isinstance(clean, Completed)
    assert clean.content == "y\ufffd" and clean.tool_calls[0].function.arguments == '{"a": "\ufffd"}'
    assert clean.tool_calls[0].id == "c\ufffd"
    assert (clean.tool_results[0].content, clean.tool_results[0].tool_call_id) == ("r\ufffd", "c\ufffd")
    assert storable(clean) is clean


def test_the_api_shows_calls_as_openai_does_and_markdown_renders_them() -> None:
    from types import SimpleNamespace

    from llmchat_history.service import message

    at = datetime(2026, 12, 2, tzinfo=UTC)
    row = {
        "request_id": "r1",
        "role": "assistant",
        "content": "",
        "status": "completed",
        "model": "m",
        "finish_reason": "tool_calls",
        "error": None,
        "prompt_tokens": 3,
        "completion_tokens": 9,
        "trace_id": None,
        "created_at": at,
        "tool_call_id": None,
        "tool_calls": [WEATHER.model_dump(mode="json")],
    }
    calls = message(SimpleNamespace(**row))
    assert calls.content is None and calls.tool_calls == [WEATHER] and calls.tool_call_id is None
    said = message(SimpleNamespace(**{**row, "content": "Checking.", "tool_calls": None}))
    assert said.content == "Checking." and said.tool_calls is None
    result = message(
        SimpleNamespace(
            **{**row, "role": "tool", "content": "-3 °C", "tool_calls": None, "tool_call_id": "call-a"}
        )
    )
    assert (result.role, result.content, result.tool_call_id, result.usage) == (
        "tool",
        "-3 °C",
        "call-a",
        None,
    )
    dumped = calls.model_dump(mode="json")
    assert dumped["content"] is None and dumped["tool_calls"][0]["function"]["name"] == "weather"

    conv = conversation().model_copy(update={"messages": [conversation().messages[0], calls, result]})
    md = render_markdown(conv)
    assert "Calls `weather` (`call-a`):" in md and '{"city": "Oslo"}' in md
    assert "## Tool (`call-a`)" in md and "-3 °C" in md
    assert md.index("how long?") < md.index("Calls `weather`") < md.index("## Tool")
    assert Conversation.model_validate_json(export(conv, "json").content) == conv


# -- replay command line --------------------------------------------------------------------------
def test_replay_times_and_targets() -> None:
    from llmchat_history.cli import parser

    args = parser().parse_args(["replay", "--since", "2026-12-01", "--until", "1800000000"])
    assert args.since == datetime(2026, 12, 1, tzinfo=UTC)
    assert args.until == datetime.fromtimestamp(1_800_000_000, UTC)
    assert args.target == "history_replay" and not args.reset
    for bad in (["--target", "history"], ["--target", "auth"], ["--target", "history_x; drop"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["replay", "--since", "2026-12-01", *bad])
    with pytest.raises(SystemExit):
        parser().parse_args(["replay", "--since", "yesterday"])


def test_nul_characters_are_stored_as_replacement_characters() -> None:
    from llmchat_history.mapping import storable

    from llmchat_common.contracts import Completed, Timings, Usage

    event = Completed(
        request_id="r1",
        attempt=1,
        seq=3,
        worker_id="w",
        ts=1.0,
        finish_reason="stop",
        text="a\x00b",
        user_message="q\x00",
        usage=Usage(),
        timings=Timings(),
    )
    clean = storable(event)
    assert (clean.text, clean.user_message) == ("a\ufffdb", "q\ufffd")  # type: ignore[union-attr]
    assert storable(clean) is clean
