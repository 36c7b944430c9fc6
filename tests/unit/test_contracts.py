from __future__ import annotations

import pytest

from llmchat_common import subjects
from llmchat_common.contracts import (
    SCHEMA_VERSION,
    ChatMessage,
    ChatRequested,
    Completed,
    Delta,
    Timings,
    UnsupportedSchemaVersion,
    Usage,
    parse_event,
)


def test_events_round_trip_by_type() -> None:
    delta = Delta(request_id="r1", attempt=2, seq=3, worker_id="w", ts=1.0, text="hi", token_ids=[5])
    assert parse_event(delta.model_dump_json()) == delta
    done = Completed(
        request_id="r1",
        attempt=1,
        seq=4,
        worker_id="w",
        ts=1.0,
        finish_reason="stop",
        text="x",
        usage=Usage(prompt_tokens=2, completion_tokens=3),
        timings=Timings(e2e_ms=5),
    )
    parsed = parse_event(done.model_dump_json())
    assert isinstance(parsed, Completed) and parsed.usage.total_tokens == 5


def test_newer_schema_is_refused_not_misread() -> None:
    raw = Delta(request_id="r", attempt=1, seq=0, worker_id="w", ts=0, text="", token_ids=[])
    data = raw.model_dump() | {"schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(UnsupportedSchemaVersion):
        parse_event(Delta.model_validate(data).model_dump_json())


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    raw = (
        b'{"type":"delta","request_id":"r","attempt":1,"seq":0,"worker_id":"w","ts":0,'
        b'"text":"a","token_ids":[1],"new_field":1}'
    )
    assert isinstance(parse_event(raw), Delta)


def test_subjects() -> None:
    assert subjects.request_subject("Qwen/Qwen2.5-0.5B") == "chat.v1.requests.Qwen_Qwen2_5-0_5B"
    assert subjects.event_subject("r1", "delta") == "chat.v1.events.r1.delta"
    assert subjects.msg_id_for_event("r1", 2, 7) == "r1:2:7"
    for bad in ("a.b", "*", ">", "a b", ""):
        with pytest.raises(ValueError, match="subject token"):
            subjects.cancel_subject(bad)


def test_a_regenerated_answer_does_not_repeat_the_user_message() -> None:
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hello"),
    ]
    first = ChatRequested(request_id="r1", model="m", messages=messages, created_at=0, deadline=1)
    again = first.model_copy(update={"request_id": "r2", "regenerate": True})
    assert first.facts()["user_message"] == "hello"
    assert again.facts()["user_message"] is None
    assert again.facts()["system_prompt"] == "be brief"
