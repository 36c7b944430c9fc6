"""Responses API objects from the log: the Response object (`POST`, `GET`, the stream's own
`response.*` events) and the stream of events of one response.

Everything is derived from the request's facts (`ResponseFacts`, on its request and its
`started` and terminal events) and its events, never from state of one edge: any edge renders
the same Response for the same log, with the same item ids, and the same stream events with the
same `sequence_number`s, so a client that lost its stream resumes at any edge with
`starting_after`.

What a stream shows:
- `response.created` first (status `queued` for a background response, else `in_progress`),
  `response.in_progress` when a worker starts it;
- without tools, the answer's text as it is generated: `response.output_item.added` (a
  message), `response.content_part.added`, `response.output_text.delta`..., and their `.done`
  events once the answer ended;
- with function tools offered, the text and the calls come when the answer has ended (the model
  writes its calls in its own syntax, which is not shown): a message if there is text, then per
  call `response.output_item.added`, `response.function_call_arguments.delta` / `.done` and
  `response.output_item.done`;
- last, `response.completed`, `response.incomplete` (the answer reached `max_output_tokens`)
  or `response.failed` (failed, or cancelled: status `cancelled`). No `[DONE]`.

A response someone may watch as it is generated (streamed, or background, without function
tools) never starts its answer over (`ChatRequested.no_reset`): a worker lost mid-answer is
continued from the stored tokens, or the response fails with the text it had (`worker_lost`),
so a client is never shown text that the final response does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmchat_chat.api.openai_format import choices_of, message_content
from llmchat_chat.api.responses_schema import item_id
from llmchat_chat.following import Diverged, SeqTracker, TextFollower, rest_of
from llmchat_common.contracts import (
    AnyEvent,
    Cancelled,
    Completed,
    Delta,
    Failed,
    ResponseFacts,
    Started,
    ToolCall,
    Usage,
)

Terminal = Completed | Failed | Cancelled


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id("msg", response_id, "output"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(
    response_id: str, position: int, call: ToolCall, *, arguments: str | None = None
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id("fc", response_id, "output", position),
        "call_id": call.id,
        "name": call.function.name,
        "arguments": call.function.arguments if arguments is None else arguments,
        "status": "completed" if arguments is None else "in_progress",
    }


# OpenAI's error codes of a failed response are a closed set: ours map onto them, and stay
# readable as `llmchat_code`.
INVALID_PROMPT = frozenset({"context_length_exceeded", "invalid_request"})


def error_of(event: Failed) -> dict[str, Any]:
    if event.code in INVALID_PROMPT:
        code = "invalid_prompt"
    elif event.code == "rate_limit_exceeded":
        code = "rate_limit_exceeded"
    else:
        code = "server_error"
    return {"code": code, "message": event.message, "llmchat_code": event.code}


def holds(facts: ResponseFacts) -> bool:
    """Function tools offered: the answer's text may be calls in the model's own syntax, so
    text and calls are shown only once the answer has ended (as the worker's parser read it)."""
    echo = facts.echo
    return bool(echo.get("tools")) and echo.get("tool_choice") != "none"


def answer_of(event: Terminal, *, held: bool) -> tuple[str, list[ToolCall]]:
    """The answer's text (without the calls' syntax) and its calls. An answer with tools that
    did not complete has no parsed calls: its raw text is not shown."""
    if isinstance(event, Completed):
        choice = choices_of(event)[0]
        return message_content(choice) or "", list(choice.tool_calls)
    return ("" if held else event.text), []


def output_of(response_id: str, event: Terminal, *, held: bool) -> list[dict[str, Any]]:
    text, calls = answer_of(event, held=held)
    done = isinstance(event, Completed) and event.finish_reason != "length"
    items = [message_item(response_id, text, "completed" if done else "incomplete")] if text else []
    return items + [call_item(response_id, k, call) for k, call in enumerate(calls)]


@dataclass
class ResponseView:
    """One response as its log has it so far."""

    id: str
    model: str
    created_at: float
    facts: ResponseFacts
    status: str = "queued"
    output: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
    error: dict[str, Any] | None = None
    incomplete: str | None = None
    completed_at: float | None = None
    terminal: Terminal | None = None

    def saw(self, event: AnyEvent) -> None:
        """Takes in a `started` or terminal event (the newest attempt's)."""
        if isinstance(event, Started) and self.status == "queued":
            self.status = "in_progress"
        elif isinstance(event, Completed | Failed | Cancelled):
            self.terminal = event
            self.output = output_of(self.id, event, held=holds(self.facts))
            self.usage = event.usage
            if isinstance(event, Completed):
                self.completed_at = event.ts
                if event.finish_reason == "length":
                    self.status, self.incomplete = "incomplete", "max_output_tokens"
                else:
                    self.status = "completed"
            elif isinstance(event, Failed):
                self.status = "failed"
                self.error = error_of(event)
            else:
                self.status = "cancelled"
                self.error = None

    @property
    def ended(self) -> bool:
        return self.status not in ("queued", "in_progress")

    def body(self) -> dict[str, Any]:
        facts, echo = self.facts, self.facts.echo
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(self.created_at),
            "status": self.status,
            "background": facts.background,
            "error": self.error,
            "incomplete_details": {"reason": self.incomplete} if self.incomplete else None,
            "instructions": facts.instructions,
            "max_output_tokens": echo.get("max_output_tokens"),
            "model": self.model,
            "output": self.output,
            "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "previous_response_id": facts.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": facts.store,
            "temperature": echo.get("temperature", 1.0),
            "text": echo.get("text", {"format": {"type": "text"}}),
            "tool_choice": echo.get("tool_choice", "auto"),
            "tools": echo.get("tools", []),
            "top_p": echo.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage_body(self.usage) if self.usage is not None else None,
            "user": None,
            "metadata": facts.metadata,
            "completed_at": int(self.completed_at) if self.completed_at is not None else None,
        }


class ResponseStream:
    """The stream events of one response from its log events, numbered from 0."""

    def __init__(self, view: ResponseView) -> None:
        self.view = view
        self.seq = -1
        self._hold = holds(view.facts)
        self._follower = TextFollower()
        self._gaps = SeqTracker()
        self._holed = False
        self._text_open = False
        self._started = False

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq, **fields}

    def _snapshot(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=self.view.body())

    def opening(self) -> list[dict[str, Any]]:
        return [self._snapshot("response.created")]

    def take(self, event: AnyEvent) -> list[dict[str, Any]]:
        """The stream events for one log event (none for those of replaced attempts)."""
        if not self._follower.current(event):
            return []
        if self._gaps.hole(event):
            self._holed = True  # the rest of the text comes from the terminal event
        if isinstance(event, Started):
            if self._started:
                return []  # a later attempt: the response was in progress already
            self._started = True
            self.view.saw(event)
            return [self._snapshot("response.in_progress")]
        if isinstance(event, Delta):
            if self._hold or self._holed or event.index != 0:
                return []
            try:
                text = self._follower.text(event)
            except Diverged:
                self._holed = True
                return []
            return self._text(text) if text else []
        if isinstance(event, Completed | Failed | Cancelled):
            return self._end(event)
        return []

    def _open_text(self) -> list[dict[str, Any]]:
        self._text_open = True
        item = message_item(self.view.id, "", "in_progress")
        item["content"] = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event("response.output_item.added", output_index=0, item=item),
            self._event(
                "response.content_part.added", item_id=item["id"], output_index=0, content_index=0, part=part
            ),
        ]

    def _text(self, text: str) -> list[dict[str, Any]]:
        out = [] if self._text_open else self._open_text()
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id("msg", self.view.id, "output"),
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _end(self, event: Terminal) -> list[dict[str, Any]]:
        self.view.saw(event)
        text, calls = answer_of(event, held=self._hold)
        out: list[dict[str, Any]] = []
        if self._text_open or text:
            try:
                rest = rest_of(self._follower.sent, text)
            except Diverged:  # cannot happen for a response that never starts over
                rest = ""
            if rest:
                out += self._text(rest)
            # No text in the end (a failure before any): the item opened ends empty.
            message = self.view.output[0] if text else message_item(self.view.id, "", "incomplete")
            done_text = message["content"][0]["text"]
            out += [
                self._event(
                    "response.output_text.done",
                    item_id=message["id"],
                    output_index=0,
                    content_index=0,
                    text=done_text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=message["id"],
                    output_index=0,
                    content_index=0,
                    part=message["content"][0],
                ),
                self._event("response.output_item.done", output_index=0, item=message),
            ]
        first_call = 1 if text else 0
        for k, call in enumerate(calls):
            index = first_call + k
            added = call_item(self.view.id, k, call, arguments="")
            out += [
                self._event("response.output_item.added", output_index=index, item=added),
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=added["id"],
                    output_index=index,
                    delta=call.function.arguments,
                ),
                self._event(
                    "response.function_call_arguments.done",
                    item_id=added["id"],
                    output_index=index,
                    arguments=call.function.arguments,
                ),
                self._event("response.output_item.done", output_index=index, item=self.view.output[index]),
            ]
        final = {"completed": "response.completed", "incomplete": "response.incomplete"}
        out.append(self._snapshot(final.get(self.view.status, "response.failed")))
        return out
