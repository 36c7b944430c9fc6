"""Fencing: exactly one attempt's terminal event is a request's outcome, decided by the log.

A worker that was paused (GC, VM steal, SIGSTOP) past `ack_wait` may wake up after its request
was redelivered and taken over; it must not publish an outcome for the old attempt. JetStream
refuses such a publish atomically with its optimistic-concurrency headers, over a subject
filter (nats-server 2.11+: `Nats-Expected-Last-Subject-Sequence-Subject`):

- an attempt's `started` (its claim on the request) is stored only if nothing was stored for
  the request since the attempt read the log (`chat.v1.events.<id>.*` ends where it looked:
  sequence 0 for a first attempt);
- its terminal (or `released`) event is stored only if the request's last `started` is still
  its own. An attempt that ends before it starts (cancelled while queued, refused) claims with
  the terminal event itself; a later attempt always claims with a `started` first, so a paused
  older attempt is fenced by it.

So once an attempt has started, no older attempt's terminal can be stored, and once a terminal
is stored, no attempt can start: the log holds at most one terminal event per request, and
"the first terminal event stored" is the same for every reader (edge, projections, replay).
Deltas stay unacknowledged for speed; readers drop the deltas of an attempt older than the
newest `started` they have seen.
"""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.errors import APIError

from llmchat_common import subjects
from llmchat_common.contracts import Cancelled, Completed, Failed, Started, is_terminal
from llmchat_common.request_log import read_request_log

# JetStream's error code for a failed expected-last-sequence check.
WRONG_LAST_SEQUENCE = 10071


def expect_last(sequence: int, subject_filter: str) -> dict[str, str]:
    """Headers that make JetStream store the message only if the last message on
    `subject_filter` has stream sequence `sequence` (0: there is none)."""
    return {
        "Nats-Expected-Last-Subject-Sequence": str(sequence),
        "Nats-Expected-Last-Subject-Sequence-Subject": subject_filter,
    }


def is_fenced(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.err_code == WRONG_LAST_SEQUENCE


# A claim refused only because an older attempt (a paused worker that woke up) still streams
# deltas is tried again this many times, from where the log then ends.
CLAIM_TRIES = 20


class Fence:
    """One attempt's position in its request's log: what its next claim or outcome expects."""

    def __init__(self, request_id: str, position: int, attempt: int = 0) -> None:
        self.request_id = request_id
        # The last stream sequence of the request's events this attempt saw before it ran.
        self.position = position
        self.attempt = attempt
        self.started_seq: int | None = None

    async def only_older_since(self, nc: Client) -> bool:
        """Whether what was stored for the request since `position` is only an older attempt
        still talking (its deltas): then the claim may be tried again from where the log ends
        now. False once the request ended, or a newer attempt started."""
        logged = await read_request_log(nc, self.request_id, after_seq=self.position)
        for entry in logged:
            event = entry.event
            if is_terminal(event) or (isinstance(event, Started) and event.attempt >= self.attempt):
                return False
        if logged:
            self.position = logged[-1].stream_seq
        return True

    def headers(self) -> dict[str, str]:
        if self.started_seq is None:
            return expect_last(self.position, subjects.request_events_filter(self.request_id))
        return expect_last(self.started_seq, subjects.event_subject(self.request_id, "started"))


def claim_of(event: Completed | Failed | Cancelled) -> Started:
    """The `started` a later attempt publishes before a terminal event it ends with at once
    (cancelled while queued, refused, poison): the claim that fences older attempts out. It
    ran nothing: no queue time, no prompt tokens."""
    shared = set(Started.model_fields) & set(type(event).model_fields) - {"type"}
    return Started.model_validate({**event.model_dump(include=shared), "queue_ms": 0.0, "prompt_tokens": 0})
