"""The Responses API's pure parts: input items from a request, items as chat messages, and the
stream events and Response object rendered from a response's log events (the same for the live
stream and every replay)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from openai.types.responses import Response, ResponseStreamEvent

from llmchat_chat.api.responses_format import ResponseStream, ResponseView
from llmchat_chat.api.responses_schema import ResponsesRequest, input_items, messages_of_items
from llmchat_chat.errors import ApiError
from llmchat_common.contracts import (
    AnyEvent,
    Cancelled,
    Completed,
    Delta,
    Failed,
    FunctionCall,
    ResponseFacts,
    Started,
    Timings,
    ToolCall,
    Usage,
)

RID = "resp_1"
# Each stream event type's class in the OpenAI SDK (validated one by one: the union's errors
# would list every member).
EVENT_TYPES: dict[str, Any] = {
    member.model_fields["type"].annotation.__args__[0]: member
    for member in get_args(get_args(ResponseStreamEvent)[0])
}


def base(attempt: int, seq: int) -> dict[str, Any]:
    return {"request_id": RID, "attempt": attempt, "seq": seq, "worker_id": "w", "ts": 100.0 + seq}


def started(attempt: int = 1, resumed_chars: int = 0) -> Started:
    return Started(**base(attempt, 0), queue_ms=0, prompt_tokens=3, resumed_chars=resumed_chars)


def delta(seq: int, text: str, attempt: int = 1) -> Delta:
    return Delta(**base(attempt, seq), text=text, token_ids=[1])


def completed(seq: int, text: str, attempt: int = 1, **extra: Any) -> Completed:
    fields: dict[str, Any] = {"finish_reason": "stop", "text": text, **extra}
    return Completed(
        **base(attempt, seq), usage=Usage(prompt_tokens=3, completion_tokens=2), timings=Timings(), **fields
    )


def view(**echo: Any) -> ResponseView:
    facts = ResponseFacts(input=[], echo=echo, metadata={"k": "v"})
    return ResponseView(RID, "tiny-random", 99.0, facts)


def render(events: list[AnyEvent], **echo: Any) -> list[dict[str, Any]]:
    stream = ResponseStream(view(**echo))
    out = stream.opening()
    for event in events:
        out += stream.take(event)
    return out


def check_shapes(out: list[dict[str, Any]]) -> None:
    """Every event parses as the OpenAI SDK's own type, numbered 0, 1, 2, ..."""
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    for event in out:
        EVENT_TYPES[event["type"]].model_validate(event)


def test_a_streamed_answer_in_openai_order_and_its_text_is_the_final_one() -> None:
    out = render([started(), delta(1, "Hel"), delta(2, "lo"), completed(3, "Hello")])
    check_shapes(out)
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(out[-1]["response"])
    text = "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta")
    assert text == final.output_text == "Hello"
    assert final.status == "completed" and final.usage is not None and final.usage.total_tokens == 5
    assert final.metadata == {"k": "v"}
    # The same item id everywhere.
    assert {e["item_id"] for e in out if "item_id" in e} == {final.output[0].id}


def test_a_replay_is_the_same_events_with_the_same_numbers() -> None:
    events: list[AnyEvent] = [started(), delta(1, "a"), delta(2, "b"), completed(3, "ab")]
    assert render(events) == render(events)


def test_a_continued_attempt_sends_no_text_twice() -> None:
    # The first worker died after "Hel"; the next continued from the 3 stored characters.
    out = render(
        [started(), delta(1, "Hel"), started(2, resumed_chars=3), delta(1, "lo", 2), completed(2, "Hello", 2)]
    )
    check_shapes(out)
    assert "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta") == "Hello"
    assert [e["type"] for e in out].count("response.in_progress") == 1


def test_a_lost_delta_is_filled_in_from_the_terminal_event() -> None:
    out = render([started(), delta(1, "Hel"), delta(3, "!"), completed(4, "Hello!")])
    assert "".join(e["delta"] for e in out if e["type"] == "response.output_text.delta") == "Hello!"


def test_with_tools_the_calls_come_at_the_end_as_function_call_items() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="record", arguments='{"a": "x"}'))
    out = render(
        [started(), delta(1, "<tool_call>"), completed(2, "<tool_call>...", content="", tool_calls=[call])],
        tools=[{"type": "function", "name": "record"}],
        tool_choice="required",
    )
    check_shapes(out)
    kinds = [e["type"] for e in out]
    assert "response.output_text.delta" not in kinds
    assert kinds[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(out[-1]["response"])
    [item] = final.output
    assert item.type == "function_call" and item.call_id == "call_1" and item.arguments == '{"a": "x"}'


def test_max_output_tokens_is_incomplete_and_a_failure_is_failed() -> None:
    out = render([started(), delta(1, "ab"), completed(2, "ab", finish_reason="length")])
    final = Response.model_validate(out[-1]["response"])
    assert out[-1]["type"] == "response.incomplete"
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    failed = Failed(**base(2, 0), code="worker_lost", message="lost", retriable=True, text="ab")
    out = render([started(), delta(1, "ab"), failed])
    check_shapes(out)
    final = Response.model_validate(out[-1]["response"])
    assert out[-1]["type"] == "response.failed" and final.status == "failed"
    assert final.error is not None and final.error.code == "server_error"
    assert out[-1]["response"]["error"]["llmchat_code"] == "worker_lost"
    assert final.output_text == "ab"  # what the client was shown is what the response holds


def test_cancelled_while_queued_ends_failed_with_status_cancelled() -> None:
    out = render([Cancelled(**base(1, 0), reason="client")], background=True)
    assert [e["type"] for e in out] == ["response.created", "response.failed"]
    assert out[-1]["response"]["status"] == "cancelled"


def test_a_string_input_is_one_user_message() -> None:
    items = input_items(ResponsesRequest(model="m", input="Hi"), RID)
    assert items == [
        {
            "type": "message",
            "id": items[0]["id"],
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi"}],
            "status": "completed",
        }
    ]
    assert items[0]["id"] == input_items(ResponsesRequest(model="m", input="Hi"), RID)[0]["id"]


def test_calls_and_their_outputs_become_one_assistant_message_and_tool_messages() -> None:
    body = ResponsesRequest(
        model="m",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"x": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        ],
    )
    messages = messages_of_items(input_items(body, RID))
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}, "input.0.content.0.type"),
        ({"type": "item_reference", "id": "msg_1"}, "input.0.type"),
        ({"role": "robot", "content": "hi"}, "input.0.role"),
        ({"type": "function_call", "call_id": "c", "arguments": "{}"}, "input.0.name"),
        ({"type": "function_call_output", "output": "x"}, "input.0.call_id"),
    ],
)
def test_unreadable_input_is_refused_naming_the_field(item: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as refused:
        input_items(ResponsesRequest(model="m", input=[item]), RID)
    assert refused.value.param == param


def test_a_long_string_input_is_one_message_not_too_many_items() -> None:
    body = ResponsesRequest(model="m", input="x" * 5000)
    assert input_items(body, RID)[0]["content"][0]["text"] == "x" * 5000
    with pytest.raises(ValueError, match="2048"):
        ResponsesRequest(model="m", input=[{"role": "user", "content": "hi"}] * 2049)


def test_a_lone_surrogate_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        ResponsesRequest(model="m", input="hi", metadata={"k": "\ud800"})
    item = {"type": "function_call_output", "call_id": "c\ud800", "output": "x"}
    with pytest.raises(ApiError) as refused:
        input_items(ResponsesRequest(model="m", input=[item]), RID)
    assert refused.value.param == "input.0.call_id"


def test_a_started_stream_opens_in_progress_then_says_so() -> None:
    started_view = view()
    started_view.status = "in_progress"
    stream = ResponseStream(started_view)
    out = stream.opening() + stream.take(started())
    assert [(e["type"], e["response"]["status"]) for e in out] == [
        ("response.created", "in_progress"),
        ("response.in_progress", "in_progress"),
    ]


def test_with_tools_a_failed_answer_shows_no_raw_call_syntax() -> None:
    failed = Failed(**base(2, 0), code="worker_lost", message="lost", retriable=True, text='<tool_call>{"na')
    out = render([started(), delta(1, "<tool_call>"), failed], tools=[{"type": "function", "name": "f"}])
    final = Response.model_validate(out[-1]["response"])
    assert final.status == "failed" and final.output == []
