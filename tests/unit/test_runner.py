"""RequestRunner logic with a scripted engine (the engine itself is covered end to end)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    ChatRequested,
    Completed,
    Delta,
    Failed,
    FunctionTool,
    GenerationParams,
    Started,
)
from llmchat_worker.errors import EngineFailure
from llmchat_worker.service import CoalesceConfig, DeltaCoalescer, RequestRunner, TokenChunk
from tests.unit.sinks import ListSink


class ScriptedEngine:
    max_model_len = 64
    model_path = "scripted"
    stop_token_ids = frozenset({0})

    def __init__(
        self, n_tokens: int = 10, delay: float = 0.0, fail_at: int | None = None, dead_at: int | None = None
    ) -> None:
        self.n_tokens = n_tokens
        self.delay = delay
        self.fail_at = fail_at
        self.dead_at = dead_at
        self.aborted: list[str] = []

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        return [1] * sum(len(m.content.split()) for m in messages)

    def decode(self, ids: list[int]) -> str:
        return "".join(f"t{i - 100} " for i in ids if i >= 100)

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        n = min(self.n_tokens, max_tokens)
        for i in range(n):
            if self.delay:
                await asyncio.sleep(self.delay)
            if i == self.fail_at:
                raise RuntimeError("boom")
            if i == self.dead_at:
                raise EngineFailure("dead")
            last = i == n - 1
            yield TokenChunk(f"t{i} ", [100 + i], ("length" if n == max_tokens else "stop") if last else None)

    async def abort(self, key: str) -> None:
        self.aborted.append(key)


def make_request(words: int = 3, max_tokens: int | None = 10, timeout: float = 30.0) -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id="chatcmpl-test",
        model="m",
        messages=[ChatMessage(role="user", content=" ".join(["w"] * words))],
        params=GenerationParams(max_tokens=max_tokens),
        created_at=now,
        deadline=now + timeout,
    )


def runner(
    engine: ScriptedEngine, request: ChatRequested | None = None, max_tokens: int = 4
) -> tuple[RequestRunner, ListSink]:
    sink = ListSink()
    return (
        RequestRunner(
            request or make_request(),
            attempt=1,
            worker_id="w1",
            engine=engine,
            sink=sink,
            coalesce=CoalesceConfig(max_tokens=max_tokens, max_ms=10_000),
        ),
        sink,
    )


def check_invariants(events: list[object]) -> None:
    assert isinstance(events[0], Started)
    assert [e.seq for e in events] == list(range(len(events)))  # type: ignore[attr-defined]
    terminals = [e for e in events if isinstance(e, Completed | Failed | Cancelled)]
    assert terminals == [events[-1]]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == terminals[0].text
    assert sum(len(d.token_ids) for d in deltas) == terminals[0].usage.completion_tokens


async def test_completes_with_coalesced_deltas_and_usage() -> None:
    run, sink = runner(ScriptedEngine(n_tokens=10))
    terminal = await run.run()
    assert isinstance(terminal, Completed)
    assert terminal.finish_reason == "length"
    assert terminal.usage.prompt_tokens == 3 and terminal.usage.completion_tokens == 10
    deltas = [e for e in sink.events if isinstance(e, Delta)]
    # First token alone (time to first token), then batches of 4, then the rest.
    assert [len(d.token_ids) for d in deltas] == [1, 4, 4, 1]
    assert terminal.timings.ttft_ms is not None and terminal.timings.tpot_ms is not None
    check_invariants(sink.events)


async def test_cancel_mid_generation_keeps_partial_usage() -> None:
    engine = ScriptedEngine(n_tokens=1000, delay=0.005)
    run, sink = runner(engine, make_request(max_tokens=None))
    task = asyncio.create_task(run.run())
    while len([e for e in sink.events if isinstance(e, Delta)]) < 2:
        await asyncio.sleep(0.005)
    run.cancel("client")
    terminal = await task
    assert isinstance(terminal, Cancelled) and terminal.reason == "client"
    assert 0 < terminal.usage.completion_tokens < 1000
    assert engine.aborted == ["chatcmpl-test-1"]
    check_invariants(sink.events)


async def test_failed_mid_generation_by_the_platform_keeps_the_text_so_far() -> None:
    """A full event log ends the answer `failed`, retriable, with what was generated."""
    engine = ScriptedEngine(n_tokens=1000, delay=0.005)
    run, sink = runner(engine, make_request(max_tokens=None))
    task = asyncio.create_task(run.run())
    while len([e for e in sink.events if isinstance(e, Delta)]) < 2:
        await asyncio.sleep(0.005)
    run.fail("log_full", "the event log is full; retry later")
    run.cancel("client")  # too late: the first outcome stands
    terminal = await task
    assert isinstance(terminal, Failed) and terminal.code == "log_full" and terminal.retriable
    assert 0 < terminal.usage.completion_tokens < 1000 and terminal.text
    assert engine.aborted == ["chatcmpl-test-1"]
    check_invariants(sink.events)


async def test_failed_before_it_starts_never_reaches_the_engine() -> None:
    engine = ScriptedEngine()
    run, sink = runner(engine)
    run.fail("log_full", "the event log is full; retry later")
    terminal = await run.run()
    assert isinstance(terminal, Failed) and terminal.code == "log_full"
    assert terminal.usage.completion_tokens == 0 and sink.events == [terminal]
    assert not engine.aborted  # nothing was started


async def test_deadline_aborts_engine_and_says_why() -> None:
    engine = ScriptedEngine(n_tokens=1000, delay=0.005)
    run, sink = runner(engine, make_request(max_tokens=None, timeout=0.2))
    terminal = await run.run()
    assert isinstance(terminal, Cancelled) and terminal.reason == "deadline"
    assert terminal.usage.completion_tokens > 0
    assert engine.aborted
    check_invariants(sink.events)


async def test_expired_before_start_never_reaches_engine() -> None:
    engine = ScriptedEngine()
    run, sink = runner(engine, make_request(timeout=-1))
    terminal = await run.run()
    assert isinstance(terminal, Cancelled) and terminal.reason == "deadline"
    assert sink.events == [terminal]


async def test_cancelled_while_queued_is_skipped() -> None:
    run, sink = runner(ScriptedEngine())
    run.cancel("client")
    terminal = await run.run()
    assert isinstance(terminal, Cancelled) and terminal.usage.completion_tokens == 0
    assert sink.events == [terminal]


@pytest.mark.parametrize(("words", "max_tokens"), [(64, 1), (60, 10)])
async def test_context_overflow_fails_clearly(words: int, max_tokens: int) -> None:
    run, _ = runner(ScriptedEngine(), make_request(words=words, max_tokens=max_tokens))
    terminal = await run.run()
    assert isinstance(terminal, Failed) and terminal.code == "context_length_exceeded"
    assert not terminal.retriable


async def test_engine_error_on_one_request_fails_it_only() -> None:
    run, sink = runner(ScriptedEngine(fail_at=3))
    terminal = await run.run()
    assert isinstance(terminal, Failed) and terminal.code == "engine_error"
    check_invariants(sink.events)


async def test_dead_engine_propagates_without_terminal() -> None:
    run, sink = runner(ScriptedEngine(dead_at=2))
    with pytest.raises(EngineFailure):
        await run.run()
    assert not any(isinstance(e, Completed | Failed | Cancelled) for e in sink.events)


def test_coalescer_holds_tokens_only_within_max_ms_of_the_last_event() -> None:
    now = [0.0]
    coalescer = DeltaCoalescer(CoalesceConfig(max_tokens=100, max_ms=10), clock=lambda: now[0])
    assert coalescer.add("a", [1])  # first token goes alone
    coalescer.take()
    now[0] = 0.020
    assert coalescer.add("b", [2])  # the last event went out 20 ms ago: no reason to wait
    coalescer.take()
    now[0] = 0.025
    assert not coalescer.add("c", [3])  # 5 ms after an event: held until 10 ms after it
    assert coalescer.due_in() == pytest.approx(0.005)
    now[0] = 0.027
    assert not coalescer.add("d", [4])
    now[0] = 0.030
    assert coalescer.add("e", [5])
    assert coalescer.take() == ("cde", [3, 4, 5])


class PacedEngine(ScriptedEngine):
    """Token i comes `gaps[i]` seconds after the one before; each yield records when."""

    def __init__(self, gaps: list[float]) -> None:
        super().__init__(n_tokens=len(gaps))
        self.gaps = gaps

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        for i, gap in enumerate(self.gaps):
            await asyncio.sleep(gap)
            last = i == len(self.gaps) - 1
            yield TokenChunk(f"t{i} ", [100 + i], "stop" if last else None)


class TimedSink(ListSink):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def emit(self, event: object) -> None:
        self.times.append(time.monotonic())
        await super().emit(event)


def paced_runner(gaps: list[float], max_ms: float) -> tuple[RequestRunner, TimedSink]:
    sink = TimedSink()
    run = RequestRunner(
        make_request(),
        attempt=1,
        worker_id="w1",
        engine=PacedEngine(gaps),
        sink=sink,
        coalesce=CoalesceConfig(max_tokens=100, max_ms=max_ms),
    )
    return run, sink


async def test_a_slow_stream_gets_one_event_per_token() -> None:
    # Tokens 30 ms apart, coalescing window 10 ms: nothing to batch, so nothing waits for the
    # next token (it used to: a token sat in the buffer until the one after it arrived).
    run, sink = paced_runner([0.0, 0.03, 0.03, 0.03], max_ms=10)
    terminal = await run.run()
    deltas = [e for e in sink.events if isinstance(e, Delta)]
    assert [len(d.token_ids) for d in deltas] == [1, 1, 1, 1]
    check_invariants([*sink.events])
    assert isinstance(terminal, Completed)


async def test_held_tokens_go_out_when_the_window_ends_not_with_the_next_token() -> None:
    # Three tokens at once, then a long pause: the two held back go out about 20 ms after the
    # first event (a timer), long before the fourth token comes.
    run, sink = paced_runner([0.0, 0.001, 0.001, 0.4], max_ms=20)
    started = time.monotonic()
    await run.run()
    deltas = [(t, e) for t, e in zip(sink.times, sink.events, strict=False) if isinstance(e, Delta)]
    assert [len(e.token_ids) for _, e in deltas] == [1, 2, 1]
    assert deltas[1][0] - started < 0.2
    check_invariants(sink.events)


class SwallowingSink(ListSink):
    """Like the broker client's publish, an await that swallows a task cancellation."""

    async def emit(self, event: object) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.002)
        self.events.append(event)


async def test_cancel_is_honoured_even_when_an_await_swallows_it() -> None:
    engine = ScriptedEngine(n_tokens=1000, delay=0.001)
    sink = SwallowingSink()
    run = RequestRunner(
        make_request(max_tokens=None),
        attempt=1,
        worker_id="w1",
        engine=engine,
        sink=sink,
        coalesce=CoalesceConfig(max_tokens=1, max_ms=0),
    )
    task = asyncio.create_task(run.run())
    while len(sink.events) < 5:
        await asyncio.sleep(0.001)
    run.cancel("client")
    terminal = await asyncio.wait_for(task, timeout=5)
    assert isinstance(terminal, Cancelled)
    assert terminal.usage.completion_tokens < 1000
    assert engine.aborted
    check_invariants(sink.events)


async def test_chat_template_error_is_the_callers() -> None:
    class Picky(ScriptedEngine):
        def encode_chat(
            self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None
        ) -> list[int]:
            raise ValueError("roles must alternate")

    run, _ = runner(Picky())
    terminal = await run.run()
    assert isinstance(terminal, Failed)
    assert terminal.code == "invalid_request"
