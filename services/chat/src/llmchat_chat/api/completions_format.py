"""OpenAI's legacy completions on the wire (`text_completion` objects and chunks), built from the
request's events as vLLM's `/v1/completions` builds them from its engine's outputs
(vllm/entrypoints/openai/completion/serving.py):

- `logprobs` is `{tokens, token_logprobs, top_logprobs, text_offset}`: per token its text, its log
  probability and a map of the most likely tokens' texts to theirs (the sampled token's and the
  k most likely: up to k + 1 entries; tokens that decode alike collapse), and the offset of the
  token in the choice's text, counted from the lengths of the tokens before it (from 0, the echoed
  prompt included; a stream goes on where its previous chunk ended);
- with `echo`, a choice's text starts with the prompt, and its log probabilities with the prompt
  tokens' (the first has none: null, as in vLLM); a stream sends the prompt with the choice's
  first text;
- a choice's index is `prompt index * n + choice`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from llmchat_chat.api.openai_format import choices_of, usage_body
from llmchat_chat.following import TextFollower, rest_of
from llmchat_common.contracts import (
    AnyEvent,
    Choice,
    Completed,
    Delta,
    PromptLogprob,
    Started,
    TokenLogprob,
    Usage,
)


@dataclass(frozen=True, slots=True)
class LogprobEntry:
    """One token of a legacy `logprobs` object."""

    token: str
    logprob: float | None
    top: dict[str, float] | None


def generated_entries(logprobs: Sequence[TokenLogprob]) -> list[LogprobEntry]:
    return [LogprobEntry(lp.token, lp.logprob, {t.token: t.logprob for t in lp.top}) for lp in logprobs]


def prompt_entries(logprobs: Sequence[PromptLogprob]) -> list[LogprobEntry]:
    return [LogprobEntry(lp.token, lp.logprob, lp.top) for lp in logprobs]


def legacy_logprobs(entries: Sequence[LogprobEntry], start: int = 0) -> tuple[dict[str, Any], int]:
    """The `logprobs` object of these tokens, their offsets counted from `start`; and where the
    next token's offset starts."""
    offsets: list[int] = []
    at = start
    for entry in entries:
        offsets.append(at)
        at += len(entry.token)
    body = {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [e.top for e in entries],
        "text_offset": offsets,
    }
    return body, at


def choice_body(
    index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


@dataclass(frozen=True, slots=True)
class Echo:
    """What a choice's answer starts with (`echo`): the prompt's text and, with `logprobs`, its
    tokens' log probabilities."""

    text: str
    logprobs: list[PromptLogprob] | None = None

    @classmethod
    def of(cls, started: Started | None, completed: Completed | None = None) -> Echo | None:
        if started is not None and started.echo_text is not None:
            return cls(started.echo_text, started.prompt_logprobs)
        if completed is not None and completed.echo_text is not None:
            return cls(completed.echo_text)
        return None


def completion_choices(
    completed: Completed, *, echo: Echo | None, logprobs: bool, first_index: int = 0
) -> list[dict[str, Any]]:
    """A finished request's choices (one prompt's), as `text_completion` has them."""
    out = []
    for choice in choices_of(completed):
        text = choice.text
        entries: list[LogprobEntry] = []
        if echo is not None:
            text = echo.text + text
            entries = prompt_entries(echo.logprobs or [])
        body = None
        if logprobs:
            body, _ = legacy_logprobs(entries + generated_entries(choice.logprobs or []))
        out.append(choice_body(first_index + choice.index, text, body, choice.finish_reason))
    return out


def completion_object(
    completion_id: str, model: str, created: int, choices: list[dict[str, Any]], usage: Usage
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_body(usage),
    }


class CompletionChunkWriter:
    """Serialises `text_completion` chunks for one stream; the constant parts are built once."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self._head = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
        self.include_usage = include_usage

    def choice(
        self, index: int, text: str, logprobs: dict[str, Any] | None = None, finish_reason: str | None = None
    ) -> str:
        body: dict[str, Any] = {**self._head, "choices": [choice_body(index, text, logprobs, finish_reason)]}
        if self.include_usage:
            body["usage"] = None
        return orjson.dumps(body).decode()

    def usage(self, usage: Usage) -> str:
        return orjson.dumps({**self._head, "choices": [], "usage": usage_body(usage)}).decode()


class TextChoiceStream:
    """One choice of a streamed completion, from the request's deltas to chunks: the text as it
    comes (never twice across a continued or restarted attempt: `TextFollower`), the echo with
    the first of it, the log probabilities with running offsets."""

    def __init__(self, writer: CompletionChunkWriter, index: int, *, echo: bool, logprobs: bool) -> None:
        self.writer = writer
        self.index = index
        self.follower = TextFollower()
        self._echo_wanted = echo
        self._echo: Echo | None = None
        self._echoed = False
        self._logprobs = logprobs
        self._offset = 0
        # A delta was lost (`SeqTracker`): the rest comes from the terminal event.
        self.holed = False

    def current(self, event: AnyEvent) -> bool:
        """Takes note of a new attempt (and of the echo its `started` carries); False for the
        events of attempts a newer one replaced."""
        if isinstance(event, Started) and event.attempt >= self.follower.attempt and not self._echoed:
            self._echo = Echo.of(event) or self._echo
        return self.follower.current(event)

    def delta(self, delta: Delta) -> list[str]:
        """The chunk for a delta of this choice (raises `Diverged` as `TextFollower` does)."""
        if self.holed:
            return []
        text = self.follower.text(delta)
        # A token whose text the engine still holds (part of a character, a possible stop
        # string) keeps its log probability: it goes out with no text, as in vLLM.
        if not text and not (self._logprobs and delta.logprobs and not delta.text):
            return []
        return [self._chunk(text, generated_entries(delta.logprobs or []))]

    def finish(self, choice: Choice, completed: Completed) -> list[str]:
        """What is left of the choice once its terminal event is here (the echo, when no text
        came before), and its finish."""
        out = []
        if self._echo_wanted and not self._echoed and self._echo is None:
            self._echo = Echo.of(None, completed)
        # The text of lost deltas, if any: the client ends with exactly the stored answer.
        rest = rest_of(self.follower.sent, choice.text)
        if rest or (self._echo_wanted and not self._echoed):
            out.append(self._chunk(rest, []))
        out.append(self.writer.choice(self.index, "", None, choice.finish_reason))
        return out

    def _chunk(self, text: str, entries: list[LogprobEntry]) -> str:
        if self._echo_wanted and not self._echoed:
            self._echoed = True
            if self._echo is not None:
                text = self._echo.text + text
                entries = prompt_entries(self._echo.logprobs or []) + entries
        body = None
        if self._logprobs:
            body, self._offset = legacy_logprobs(entries, self._offset)
        return self.writer.choice(self.index, text, body)
