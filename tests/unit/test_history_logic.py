"""History's pure logic: titles, cursors, the Markdown export and the events → rows mapping."""

from __future__ import annotations

from datetime import UTC, datetime

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

from llmchat_common.contracts import Cancelled, Completed, Failed, Started, Timings, Usage
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


def completed(text: str = "hi!", **over: object) -> Completed:
    return Completed(
        finish_reason="stop",
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
