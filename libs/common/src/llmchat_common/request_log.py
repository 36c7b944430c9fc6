"""One request's stored events, read back from CHAT_EVENTS, and what they say about its answer.

Read with batched direct gets (`next_by_subj` on the request's subjects): no consumer is
created, so services that write CHAT_EVENTS (the worker) may read it too (see
testing/nats_auth.py for why writers must not create consumers).

`progress_of` folds the events into the answer so far, the way every reader does: events of an
attempt older than the newest one seen are ignored (a worker presumed dead that still talks);
a `started` with `resumed_tokens=n` keeps the first n generated tokens of the chain before it; a
`reset` (its attempt's second event) drops them all.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from llmchat_common import subjects
from llmchat_common.contracts import AnyEvent, Delta, Released, Reset, Started, is_terminal, parse_event

BATCH = 1000


@dataclass(frozen=True)
class LoggedEvent:
    stream_seq: int
    event: AnyEvent


class LogUnavailable(Exception):
    """The log did not answer in time."""


async def read_request_log(
    nc: Client, request_id: str, *, after_seq: int = 0, wait_s: float = 5.0
) -> list[LoggedEvent]:
    """Every stored event of the request after `after_seq`, in stream order."""
    filter_subject = subjects.request_events_filter(request_id)
    found: list[LoggedEvent] = []
    start = after_seq + 1
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            request = {"seq": start, "next_by_subj": filter_subject, "batch": BATCH}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{subjects.EVENTS_STREAM}", json.dumps(request).encode(), reply=inbox
            )
            deadline = time.monotonic() + wait_s
            more = False
            while True:
                try:
                    msg = await sub.next_msg(timeout=max(0.01, deadline - time.monotonic()))
                except NatsTimeoutError:
                    raise LogUnavailable(f"the event log did not answer for {request_id}") from None
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    # 204: end of this batch (more may match); 404: nothing (more) matches.
                    more = status == "204" and int(headers.get("Nats-Num-Pending", "0")) > 0
                    break
                seq = int(headers["Nats-Sequence"])
                start = seq + 1
                try:
                    found.append(LoggedEvent(seq, parse_event(msg.data)))
                except ValueError:
                    continue  # an event this version cannot read is not part of the answer
            if not more:
                return found
    finally:
        await sub.unsubscribe()


@dataclass
class Progress:
    """The answer as the stored events have it."""

    attempt: int = 0
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    engine_model: str | None = None
    prompt_tokens: int = 0
    # Attempts that started and never ended (their worker died or lost the request), not
    # counting those their worker handed back on purpose (`released`).
    crashed_attempts: int = 0
    finished: bool = False
    # Why continuing from `tokens` would be wrong (a gap in the deltas), if it would.
    broken: str | None = None
    _pieces: list[tuple[list[int], str]] = field(default_factory=list)
    _next_seq: int = 0

    def _truncate(self, tokens: int, chars: int) -> None:
        kept: list[tuple[list[int], str]] = []
        count = length = 0
        for ids, text in self._pieces:
            if count + len(ids) > tokens:
                # A cut inside a delta (the new attempt cut back the bytes of a character whose
                # text was not out yet): that delta's first ids, and its text up to `chars`.
                rest = chars - length
                if count < tokens and 0 <= rest <= len(text):
                    kept.append((ids[: tokens - count], text[:rest]))
                    count, length = tokens, chars
                break
            kept.append((ids, text))
            count += len(ids)
            length += len(text)
        if count != tokens or length != chars:
            self.broken = (
                f"a resumed attempt kept {tokens} tokens and {chars} characters, not what was stored"
            )
        self._pieces = kept

    def _apply(self, event: AnyEvent) -> None:
        if is_terminal(event):
            self.finished = True
            return
        if event.attempt < self.attempt:
            return  # an older attempt still talking after a newer one took over
        if event.attempt > self.attempt:
            if isinstance(event, Delta):
                self.broken = f"attempt {event.attempt} has deltas but no start"
            elif isinstance(event, Started):
                self._truncate(event.resumed_tokens, event.resumed_chars)
            self.attempt = event.attempt
            self._next_seq = event.seq
        if isinstance(event, Reset):
            # Right after its attempt's `started` (before it, in logs written before fencing).
            self._pieces, self.broken = [], None
        if isinstance(event, Started):
            self.engine_model = event.engine_model
            self.prompt_tokens = event.prompt_tokens
            self.crashed_attempts += 1
        if isinstance(event, Released):
            self.crashed_attempts -= 1
        if isinstance(event, Delta):
            if event.seq != self._next_seq and self.broken is None:
                self.broken = f"attempt {event.attempt} lost events before seq {event.seq}"
            if event.index == 0:  # choice 0 is the answer (the others start over)
                self._pieces.append((list(event.token_ids), event.text))
        self._next_seq = event.seq + 1

    def _finish(self) -> None:
        self.tokens = [t for ids, _ in self._pieces for t in ids]
        self.text = "".join(text for _, text in self._pieces)


def progress_of(events: list[LoggedEvent]) -> Progress:
    progress = Progress()
    for logged in events:
        progress._apply(logged.event)
    progress._finish()
    return progress
