"""What a client that cannot take text back is sent across attempts (llmchat_chat.following)."""

from __future__ import annotations

import time

import pytest

from llmchat_chat.following import Diverged, TextFollower
from llmchat_common.contracts import AnyEvent, Delta, Reset, Started


def started(attempt: int, resumed_chars: int = 0) -> Started:
    return Started(
        request_id="r",
        attempt=attempt,
        seq=0,
        worker_id="w",
        ts=time.time(),
        queue_ms=0,
        prompt_tokens=1,
        resumed_chars=resumed_chars,
    )


def delta(attempt: int, seq: int, text: str) -> Delta:
    return Delta(
        request_id="r", attempt=attempt, seq=seq, worker_id="w", ts=time.time(), text=text, token_ids=[1]
    )


def reset(attempt: int) -> Reset:
    return Reset(request_id="r", attempt=attempt, seq=0, worker_id="w", ts=time.time(), reason="test")


def follow(events: list[AnyEvent]) -> str:
    follower = TextFollower()
    out = []
    for event in events:
        if follower.current(event) and isinstance(event, Delta):
            out.append(follower.text(event))
    return "".join(out)


def test_a_continued_attempt_goes_on_where_the_first_stopped() -> None:
    events: list[AnyEvent] = [
        started(1),
        delta(1, 1, "Hello "),
        delta(1, 2, "wor"),
        started(2, 9),
        delta(2, 1, "ld!"),
    ]
    assert follow(events) == "Hello world!"


def test_text_sent_beyond_what_the_new_attempt_carried_is_not_repeated() -> None:
    # The client saw "Hello world" but the new attempt carried only "Hello " over.
    events: list[AnyEvent] = [
        started(1),
        delta(1, 1, "Hello "),
        delta(1, 2, "world"),
        started(2, 6),
        delta(2, 1, "wor"),
        delta(2, 2, "ld!"),
    ]
    assert follow(events) == "Hello world!"


def test_a_reset_replays_nothing_the_client_already_has() -> None:
    events: list[AnyEvent] = [
        started(1),
        delta(1, 1, "Hello "),
        delta(1, 2, "wo"),
        reset(2),
        started(2),
        delta(2, 2, "Hello world"),
        delta(2, 3, "!"),
    ]
    assert follow(events) == "Hello world!"


def test_a_reset_after_its_attempts_start_replays_nothing_either() -> None:
    # The order since fencing: the attempt's claim (`started`), then its `reset`.
    events: list[AnyEvent] = [
        started(1),
        delta(1, 1, "Hello "),
        delta(1, 2, "wo"),
        started(2),
        reset(2),
        delta(2, 2, "Hello world"),
        delta(2, 3, "!"),
    ]
    assert follow(events) == "Hello world!"


def test_older_attempts_are_ignored_once_a_newer_one_started() -> None:
    events: list[AnyEvent] = [started(1), delta(1, 1, "a"), started(2, 1), delta(1, 2, "X"), delta(2, 1, "b")]
    assert follow(events) == "ab"


def test_a_restart_that_says_something_else_cannot_be_hidden() -> None:
    follower = TextFollower()
    for event in (started(1), delta(1, 1, "Hello"), reset(2), started(2)):
        follower.current(event)
        if isinstance(event, Delta):
            follower.text(event)
    with pytest.raises(Diverged):
        follower.text(delta(2, 2, "Goodbye"))
