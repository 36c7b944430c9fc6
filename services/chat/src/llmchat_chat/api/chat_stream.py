"""One choice of a streamed chat completion: from the request's raw deltas to OpenAI's chunks.

The deltas carry the model's raw text. What a client may see of it depends on the tool choice:
- no tools (or `none`): the text, as it comes;
- a named tool choice in bare JSON (a model without a tool-call parser): the text *is* the
  call's arguments (constrained decoding), streamed as argument fragments after a first chunk
  with the call's id and name;
- `required` in bare JSON: the text is a JSON array of calls, readable only once whole: the
  calls go out with the terminal event;
- calls in the model's own format (`auto`, or a forced call where vLLM's parser constrains the
  model to its own call format): text streams as content until the tool-call marker of the
  model's parser (from the `started` event) appears; a tail that may be the marker's beginning
  is held back. The calls (and any held-back text that was no marker after all) go out with
  the terminal event, as the worker's parser read them.

Call ids are derived from the request id (`tool_call_id`), so a call streamed before the
terminal event has the id the terminal event, history and every replay give it.
"""

from __future__ import annotations

from collections.abc import Callable

from llmchat_chat.api.openai_format import ChunkWriter, message_content
from llmchat_chat.following import TextFollower, rest_of
from llmchat_common.contracts import (
    AnyEvent,
    ChatRequested,
    Choice,
    Delta,
    NamedToolChoice,
    Started,
    TokenLogprob,
    tool_call_id,
)


def sendable_end(text: str, marker: str) -> int:
    """How much of `text` is surely content: up to the marker, or short of a tail that could be
    the marker's beginning."""
    found = text.find(marker)
    if found >= 0:
        return found
    for overlap in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:overlap]):
            return len(text) - overlap
    return len(text)


class ChoiceStream:
    def __init__(self, writer: ChunkWriter, request: ChatRequested, index: int) -> None:
        self.writer = writer
        self.request = request
        self.index = index
        self.follower = TextFollower()
        self.raw = ""
        self._sent = 0
        self._marker: str | None = None
        self._named_started = False
        self._held_logprobs: list[TokenLogprob] = []
        # A delta of the answer was lost (`SeqTracker`): nothing more streams, and the rest
        # comes from the terminal event, whose text is the whole answer.
        self.holed = False

    @property
    def mode(self) -> str:
        request = self.request
        if not request.tools_active():
            return "text"
        if self._marker:
            # Calls in the model's own format (auto, or forced by the parser's grammar).
            return "marker"
        if isinstance(request.tool_choice, NamedToolChoice):
            return "named"
        return "required" if request.tool_choice == "required" else "text"

    def current(self, event: AnyEvent) -> bool:
        """Takes note of a new attempt (and of the marker its `started` names); False for the
        events of attempts a newer one replaced."""
        if isinstance(event, Started) and event.attempt >= self.follower.attempt:
            self._marker = event.tool_call_start
        return self.follower.current(event)

    def delta(self, delta: Delta) -> list[str]:
        """The chunks for a delta of this choice (raises `Diverged` as `TextFollower` does)."""
        if self.holed:
            return []
        text = self.follower.text(delta)
        mode = self.mode
        writer, index = self.writer, self.index
        if not text:
            if delta.text or not delta.logprobs:
                return []  # already sent by an earlier attempt, or nothing at all
            # Tokens with no text yet (bytes of a character still incomplete) still have their
            # log probabilities: one per token, whatever the coalescing made of them.
            if mode == "text":
                return [writer.content("", index=index, logprobs=delta.logprobs)]
            if mode == "marker":
                self._held_logprobs.extend(delta.logprobs)
            return []
        self.raw += text
        if mode == "text":
            return [writer.content(text, index=index, logprobs=delta.logprobs)]
        if mode == "named":
            out = [] if self._named_started else [self._named_start()]
            out.append(writer.tool_call_arguments(0, text, index=index))
            return out
        if mode == "required":
            return []
        assert self._marker is not None
        self._held_logprobs.extend(delta.logprobs or [])
        end = sendable_end(self.raw, self._marker)
        if end <= self._sent:
            return []
        piece, self._sent = self.raw[self._sent : end], end
        logprobs = self._held_logprobs if delta.logprobs is not None else None
        self._held_logprobs = []
        return [writer.content(piece, index=index, logprobs=logprobs)]

    @staticmethod
    def _rest(sent: str, whole: str, chunk: Callable[[str], str]) -> list[str]:
        """The text of lost deltas, if any (`rest_of`): the client ends with exactly the
        terminal event's text, or is told it cannot (`Diverged`)."""
        rest = rest_of(sent, whole)
        return [chunk(rest)] if rest else []

    def _named_start(self) -> str:
        assert isinstance(self.request.tool_choice, NamedToolChoice)
        self._named_started = True
        call_id = tool_call_id(self.request.request_id, self.index, 0)
        return self.writer.tool_call_start(0, call_id, self.request.tool_choice.name, index=self.index)

    def finish(self, choice: Choice) -> list[str]:
        """What is left of the choice once its terminal event is here, and its finish."""
        writer, index = self.writer, self.index
        out: list[str] = []
        mode = self.mode
        if mode == "text":
            out += self._rest(
                self.follower.sent, choice.text, lambda piece: writer.content(piece, index=index)
            )
        elif mode == "named" and self._named_started and choice.tool_calls:
            arguments = choice.tool_calls[0].function.arguments
            out += self._rest(
                self.raw, arguments, lambda piece: writer.tool_call_arguments(0, piece, index=index)
            )
        if mode == "named" and choice.tool_calls and not self._named_started:
            out += [
                self._named_start(),
                writer.tool_call_arguments(0, choice.tool_calls[0].function.arguments),
            ]
        elif mode in ("required", "marker"):
            if mode == "marker":
                content = message_content(choice) or ""
                sent = self.raw[: self._sent]
                if len(content) > len(sent) and content.startswith(sent):
                    out.append(writer.content(content[len(sent) :], index=index))
            for position, call in enumerate(choice.tool_calls):
                out.append(writer.tool_call_start(position, call.id, call.function.name, index=index))
                out.append(writer.tool_call_arguments(position, call.function.arguments, index=index))
        out.append(writer.finish(choice.finish_reason, index=index))
        return out
