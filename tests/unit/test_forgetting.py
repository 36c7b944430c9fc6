"""What `forget_requests` erases, against an in-memory stand-in for the two streams (the real
broker: tests/e2e/test_forgetting.py): only ended requests, each request's own message, never
another request's, and nothing for ids that are no subject token."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from nats.js.errors import NotFoundError

from llmchat_common import subjects
from llmchat_common.contracts import ChatRequested, Completed, Started, Timings, Usage
from llmchat_common.forgetting import erase
from llmchat_common.request_log import LoggedEvent


class FakeLog:
    def __init__(self) -> None:
        self.requests: dict[int, bytes] = {}
        self.events: dict[str, bytes] = {}  # the last message on each subject
        self.stored: dict[int, Any] = {}  # every event, by its sequence
        self.deleted: list[int] = []
        self.deleted_events: list[int] = []
        self.purged: list[str] = []

    def request(self, request_id: str, seq: int) -> None:
        now = time.time()
        self.requests[seq] = (
            ChatRequested(request_id=request_id, model="m", messages=[], created_at=now, deadline=now + 60)
            .model_dump_json()
            .encode()
        )

    def event(self, event: Any) -> None:
        self.events[subjects.event_subject(event.request_id, event.type)] = event.model_dump_json().encode()
        self.stored[100 + len(self.stored)] = event

    async def events_of(self, request_id: str) -> list[LoggedEvent]:
        return [LoggedEvent(seq, e) for seq, e in self.stored.items() if e.request_id == request_id]

    async def get_last_msg(self, stream: str, subject: str, direct: bool = False) -> Any:
        assert stream == subjects.EVENTS_STREAM
        if subject not in self.events:
            raise NotFoundError
        return SimpleNamespace(data=self.events[subject])

    async def get_msg(self, stream: str, seq: int, direct: bool = False) -> Any:
        assert stream == subjects.REQUESTS_STREAM
        if seq not in self.requests:
            raise NotFoundError
        return SimpleNamespace(data=self.requests[seq])

    async def delete_msg(self, stream: str, seq: int) -> bool:
        if stream == subjects.EVENTS_STREAM:
            del self.stored[seq]
            self.deleted_events.append(seq)
            return True
        assert stream == subjects.REQUESTS_STREAM
        del self.requests[seq]
        self.deleted.append(seq)
        return True

    async def purge_stream(self, stream: str, subject: str) -> bool:
        assert stream == subjects.EVENTS_STREAM
        self.purged.append(subject)
        prefix = subject.removesuffix("*")
        self.events = {k: v for k, v in self.events.items() if not k.startswith(prefix)}
        return True


async def forget(log: FakeLog, request_ids: list[str]) -> int:
    return await erase(log, log.events_of, request_ids)  # type: ignore[arg-type]


def started(request_id: str, request_seq: int | None) -> Started:
    return Started(
        request_id=request_id,
        attempt=1,
        seq=0,
        worker_id="w",
        ts=0.0,
        queue_ms=0,
        prompt_tokens=1,
        request_seq=request_seq,
    )


def completed(request_id: str, request_seq: int | None) -> Completed:
    return Completed(
        request_id=request_id,
        attempt=1,
        seq=5,
        worker_id="w",
        ts=0.0,
        text="hi",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1, completion_tokens=1),
        timings=Timings(),
        request_seq=request_seq,
    )


async def test_ended_requests_lose_their_message_and_events() -> None:
    log = FakeLog()
    log.request("r1", 7)
    log.event(started("r1", 7))
    log.event(completed("r1", 7))
    assert await forget(log, ["r1", "r1"]) == 1
    assert log.deleted == [7] and log.purged == [subjects.request_events_filter("r1")]
    # Every event deleted on its own (a secure delete), then the subjects purged.
    assert log.deleted_events == [100, 101] and log.stored == {}
    assert log.events == {} and log.requests == {}
    # Again: nothing left, nothing done, no error.
    assert await forget(log, ["r1"]) == 0


async def test_a_running_request_is_left_for_its_end() -> None:
    log = FakeLog()
    log.request("r2", 3)
    log.event(started("r2", 3))
    assert await forget(log, ["r2"]) == 0
    assert log.deleted == [] and log.purged == [] and 3 in log.requests


async def test_never_another_requests_message() -> None:
    """A sequence that holds another request (a wrong or forged `request_seq`) is not deleted;
    the request's events still go."""
    log = FakeLog()
    log.request("other", 9)
    log.event(completed("r3", 9))
    assert await forget(log, ["r3"]) == 1
    assert log.deleted == [] and 9 in log.requests
    assert log.purged == [subjects.request_events_filter("r3")]


async def test_an_older_log_without_sequences_loses_its_events() -> None:
    log = FakeLog()
    log.request("r4", 2)
    log.event(completed("r4", None))
    assert await forget(log, ["r4"]) == 1
    assert log.deleted == [] and log.events == {}


async def test_ids_that_are_no_subject_token_are_skipped() -> None:
    log = FakeLog()
    assert await forget(log, ["a.b", "*", "", "x y"]) == 0
    assert log.purged == []
