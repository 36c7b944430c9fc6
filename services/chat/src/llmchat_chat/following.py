"""Following one request's answer across attempts, for a client that cannot take text back.

A redelivered attempt either continues (its `started` says how many characters of the answer
it carries over) or starts over after a `reset`. Either way the text this reader already passed
on beyond the carried-over part must not be sent again: the new attempt's text is checked
against it and skipped while it matches (with greedy sampling it does), and only what goes
beyond is new. Text that differs from what was sent cannot be taken back: `Diverged`.
"""

from __future__ import annotations

from llmchat_common.contracts import AnyEvent, Delta, Reset, Started


class Diverged(Exception):
    """A new attempt's text differs from what the client was already sent."""


class TextFollower:
    def __init__(self) -> None:
        self.attempt = 0
        self.sent = ""
        self._skip = ""

    def current(self, event: AnyEvent) -> bool:
        """Takes note of a new attempt; False for events of attempts it replaced."""
        if event.attempt < self.attempt:
            return False
        if event.attempt > self.attempt:
            if isinstance(event, Reset):
                self._skip = self.sent
            elif isinstance(event, Started):
                self._skip = self.sent[event.resumed_chars :]
            self.attempt = event.attempt
        return True

    def text(self, delta: Delta) -> str:
        """What of this delta's text is new to the client."""
        text = delta.text
        if self._skip:
            if self._skip.startswith(text):
                self._skip = self._skip[len(text) :]
                return ""
            if not text.startswith(self._skip):
                raise Diverged
            text = text[len(self._skip) :]
            self._skip = ""
        self.sent += text
        return text


class SeqTracker:
    """Holes in an attempt's events. Deltas go out without a per-event ack, so one can be
    lost (a broken connection between the worker and the broker): the attempt's `seq` then
    jumps. Only events of the newest attempt are given (older ones are dropped before); the
    first event seen of an attempt sets where it is (a stream resumed mid-attempt)."""

    def __init__(self) -> None:
        self.attempt = 0
        self._next = 0
        self.holes = 0

    def hole(self, event: AnyEvent) -> bool:
        """Whether events of this attempt were lost before `event`."""
        if event.attempt != self.attempt:
            self.attempt, self._next = event.attempt, event.seq + 1
            return False
        lost = event.seq > self._next
        self._next = max(self._next, event.seq + 1)
        self.holes += lost
        return lost


def rest_of(sent: str, whole: str) -> str:
    """What a client that was sent `sent` lacks of the answer `whole` (the text of lost deltas;
    usually nothing). It must end with exactly `whole`: text it was sent that differs cannot be
    taken back (`Diverged`)."""
    if not whole.startswith(sent):
        raise Diverged
    return whole[len(sent) :]
