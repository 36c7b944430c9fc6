"""Failover with continuation, as logic: folding stored events into the answer so far, and a
runner that goes on from it (the real engine and kill are covered in tests/e2e)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from llmchat_common.contracts import (
    AnyEvent,
    ChatMessage,
    ChatRequested,
    Completed,
    Delta,
    GenerationParams,
    Reset,
    Started,
)
from llmchat_common.request_log import LoggedEvent, progress_of
from llmchat_worker.service import CoalesceConfig, RequestRunner, Resume, TokenChunk

RID = "chatcmpl-cont"


class PositionalEngine:
    """Greedy stand-in: the token at position p of the sequence is always the same, so a run
    continued from any prefix gives what an uninterrupted run gives."""

    max_model_len = 512
    model_path = "positional"

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        return [1, 2, 3]

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        for i in range(max_tokens):
            position = len(prompt_ids) + i
            last = i == max_tokens - 1
            yield TokenChunk(f"w{position} ", [1000 + position], "length" if last else None)

    async def abort(self, key: str) -> None:
        return None


class ListSink:
    def __init__(self) -> None:
        self.events: list[AnyEvent] = []

    async def emit(self, event: AnyEvent) -> None:
        self.events.append(event)

    async def emit_terminal(self, event: AnyEvent) -> None:
        self.events.append(event)


def request(max_tokens: int = 20) -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id=RID,
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        params=GenerationParams(max_tokens=max_tokens, temperature=0),
        created_at=now,
        deadline=now + 30,
    )


async def run(resume: Resume | None = None, reset: str | None = None, attempt: int = 1) -> list[AnyEvent]:
    sink = ListSink()
    runner = RequestRunner(
        request(),
        attempt=attempt,
        worker_id="w",
        engine=PositionalEngine(),
        sink=sink,
        coalesce=CoalesceConfig(max_tokens=4, max_ms=1e9),
        resume=resume,
        reset_reason=reset,
    )
    await runner.run()
    return sink.events


def logged(events: list[AnyEvent]) -> list[LoggedEvent]:
    return [LoggedEvent(i + 1, e) for i, e in enumerate(events)]


async def test_a_continued_run_equals_an_uninterrupted_one() -> None:
    whole = await run()
    full = whole[-1]
    assert isinstance(full, Completed)
    # The first attempt died after its started event and two deltas.
    cut = logged(whole[:3])
    progress = progress_of(cut)
    assert not progress.finished and progress.broken is None and progress.crashed_attempts == 1
    assert progress.tokens == [t for e in whole[1:3] if isinstance(e, Delta) for t in e.token_ids]
    second = await run(Resume(progress.tokens, progress.text), attempt=2)
    started = second[0]
    assert isinstance(started, Started) and started.resumed_tokens == len(progress.tokens)
    assert started.resumed_chars == len(progress.text)
    done = second[-1]
    assert isinstance(done, Completed)
    assert done.text == full.text and done.usage == full.usage  # the whole answer, once
    streamed = progress.text + "".join(e.text for e in second if isinstance(e, Delta))
    assert streamed == full.text  # what a reader of the log sees: no gap, no repeat
    # The log of both attempts folds into the same answer.
    assert progress_of(logged(whole[:3] + second)).finished


async def test_a_gap_in_the_stored_deltas_forbids_continuing() -> None:
    whole = await run()
    with_gap = [whole[0], whole[1], whole[3]]  # the second delta was never stored
    assert progress_of(logged(with_gap)).broken is not None


async def test_a_reset_starts_over_and_readers_drop_the_old_text() -> None:
    first = (await run())[:3]
    second = await run(reset="test", attempt=2)
    assert isinstance(second[0], Reset) and isinstance(second[1], Started)
    assert second[1].resumed_tokens == 0
    # A third attempt that reads both folds them to the second attempt's text only.
    progress = progress_of(logged(first + second[:3]))
    assert progress.attempt == 2 and progress.crashed_attempts == 2
    assert progress.text == "".join(e.text for e in second[:3] if isinstance(e, Delta))


async def test_events_of_an_older_attempt_after_a_newer_one_are_ignored() -> None:
    first = await run()
    progress = progress_of(logged(first[:2]))
    second = await run(Resume(progress.tokens, progress.text), attempt=2)
    # The presumed-dead first worker still publishes after the second took over.
    interleaved = first[:2] + second[:2] + first[2:4]
    folded = progress_of(logged(interleaved))
    assert folded.attempt == 2
    assert folded.text == progress.text + "".join(e.text for e in second[:2] if isinstance(e, Delta))


async def test_a_released_attempt_is_continued_and_is_no_crash() -> None:
    sink = ListSink()
    runner = RequestRunner(
        request(),
        attempt=1,
        worker_id="w",
        engine=PositionalEngine(),
        sink=sink,
        coalesce=CoalesceConfig(max_tokens=4, max_ms=1e9),
    )
    whole = await run()
    # Shutting down mid-answer: buffered text is flushed, then the attempt says it let go.
    for event in whole[:3]:
        sink.events.append(event)
    runner._seq = 3
    await runner.release("shutdown")
    released = sink.events[-1]
    assert released.type == "released" and released.attempt == 1
    progress = progress_of(logged(sink.events))
    assert progress.crashed_attempts == 0 and not progress.finished
    assert progress.tokens == [t for e in whole[1:3] if isinstance(e, Delta) for t in e.token_ids]
