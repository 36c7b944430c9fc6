"""Failover with continuation, as logic: folding stored events into the answer so far, and a
runner that goes on from it (the real engine and kill are covered in tests/e2e)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from llmchat_chat.following import TextFollower
from llmchat_common.contracts import (
    AnyEvent,
    ChatMessage,
    ChatRequested,
    Completed,
    Delta,
    FunctionTool,
    GenerationParams,
    Reset,
    Started,
)
from llmchat_common.request_log import LoggedEvent, Progress, progress_of
from llmchat_worker.handlers import RequestConsumer
from llmchat_worker.service import CoalesceConfig, RequestRunner, Resume, TokenChunk, settle_resume
from llmchat_worker.settings import WorkerSettings
from tests.unit.sinks import ListSink

RID = "chatcmpl-cont"


class PositionalEngine:
    """Greedy stand-in: the token at position p of the sequence is always the same, so a run
    continued from any prefix gives what an uninterrupted run gives."""

    max_model_len = 512
    model_path = "positional"
    stop_token_ids = frozenset({0})

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        return [1, 2, 3]

    def decode(self, ids: list[int]) -> str:
        return "".join(f"w{i - 1000} " for i in ids if i >= 1000)

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
    # The claim first (the log takes it only if nothing came since the attempt looked), then why.
    assert isinstance(second[0], Started) and isinstance(second[1], Reset)
    assert second[0].resumed_tokens == 0
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


# -- Resumed ids that end inside a character, or with the answer's end ----------------------

EOS = 3
BYTE0 = 100  # byte b is token BYTE0 + b; ids below are special tokens (no text)
REPLACEMENT = "\ufffd"
ANSWER = "Hi é€😀 ok, naïve café 🙂 done."


class ByteEngine:
    """A byte-level tokenizer (one token per UTF-8 byte) and a greedy model that writes ANSWER
    then EOS, with vLLM's incremental detokenizer as it really behaves: it holds back the bytes
    of an incomplete character, and primed with prompt + ids that end inside a character, its
    first text is the whole decoded prompt and answer so far (the bug this guards against)."""

    max_model_len = 512
    model_path = "bytes"
    stop_token_ids = frozenset({EOS})
    prompt_text = "user\nhi\nassistant\n"

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        return [BYTE0 + b for b in self.prompt_text.encode()]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - BYTE0 for i in ids if i >= BYTE0).decode("utf-8", errors="replace")

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        answer = ANSWER.encode()
        ids = list(prompt_ids)
        position = len(ids) - len(self.prompt_text.encode())
        primed = self.decode(ids)
        shown = 0 if primed.endswith(REPLACEMENT) else len(primed)
        for i in range(max_tokens):
            token = BYTE0 + answer[position + i] if position + i < len(answer) else EOS
            ids.append(token)
            full = self.decode(ids)
            text = "" if full.endswith(REPLACEMENT) else full[shown:]
            shown += len(text)
            stop = token == EOS and not params.ignore_eos
            yield TokenChunk(text, [token], "stop" if stop else "length" if i == max_tokens - 1 else None)
            if stop:
                return

    async def abort(self, key: str) -> None:
        return None


def byte_request(*, ignore_eos: bool = False) -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id=RID,
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        params=GenerationParams(max_tokens=100, temperature=0, ignore_eos=ignore_eos),
        created_at=now,
        deadline=now + 30,
    )


async def run_bytes(resume: Resume | None = None, attempt: int = 1) -> list[AnyEvent]:
    sink = ListSink()
    runner = RequestRunner(
        byte_request(),
        attempt=attempt,
        worker_id="w",
        engine=ByteEngine(),
        sink=sink,
        coalesce=CoalesceConfig(max_tokens=3, max_ms=1e9),
        resume=resume,
    )
    await runner.run()
    return sink.events


def settled(progress: Progress, engine: ByteEngine | None = None) -> Resume | None:
    engine = engine or ByteEngine()
    return settle_resume(
        Resume(progress.tokens, progress.text),
        decode=engine.decode,
        prompt_ids=engine.encode_chat([]),
        stop_token_ids=engine.stop_token_ids,
    )


def client_text(events: list[AnyEvent]) -> str:
    """What the edge's OpenAI stream sends, following every attempt in the log."""
    follower, sent = TextFollower(), []
    for event in events:
        if follower.current(event) and isinstance(event, Delta):
            sent.append(follower.text(event))
    return "".join(sent)


async def test_resumed_ids_ending_inside_a_character_are_cut_back_to_its_start() -> None:
    whole = await run_bytes()
    full = whole[-1]
    assert isinstance(full, Completed) and full.text == ANSWER and full.finish_reason == "stop"
    engine = ByteEngine()
    cut_inside = 0
    # The first attempt died after each of its deltas in turn (the last one holds EOS).
    for stored in range(2, len(whole) - 1):
        cut = whole[:stored]
        progress = progress_of(logged(cut))
        inside = engine.decode(progress.tokens).endswith(REPLACEMENT)
        cut_inside += inside
        resume = settled(progress)
        assert resume is not None and resume.finish_reason is None
        assert engine.decode(resume.tokens) == progress.text  # no text is dropped...
        assert (
            len(resume.tokens) < len(progress.tokens)
            if inside
            else resume == Resume(progress.tokens, progress.text)
        )
        second = await run_bytes(resume, attempt=2)
        started = second[0]
        assert isinstance(started, Started)
        assert started.resumed_tokens == len(resume.tokens) and started.resumed_chars == len(progress.text)
        streamed = progress.text + "".join(e.text for e in second if isinstance(e, Delta))
        assert streamed == ANSWER  # ... nor repeated: the prompt's text never shows up
        done = second[-1]
        assert isinstance(done, Completed) and done.text == ANSWER and done.finish_reason == "stop"
        # The whole answer's tokens, once: the ones cut back are generated again, not added.
        assert done.usage == full.usage
        assert client_text(cut + second) == ANSWER
    assert cut_inside >= 3  # "é", "€", "😀"... : the case is covered


async def test_a_third_attempt_folds_a_resume_cut_inside_a_delta() -> None:
    whole = await run_bytes()
    engine = ByteEngine()
    cut = next(
        whole[:n]
        for n in range(2, len(whole))
        if engine.decode(progress_of(logged(whole[:n])).tokens).endswith(REPLACEMENT)
    )
    first = progress_of(logged(cut))
    resume = settled(first)
    assert resume is not None and len(resume.tokens) < len(first.tokens)
    second = await run_bytes(resume, attempt=2)
    # The second attempt dies too, after two deltas: a third one reads all of it.
    partial = second[:3]
    progress = progress_of(logged(cut + partial))
    assert progress.broken is None
    new = [e for e in partial if isinstance(e, Delta)]
    assert progress.tokens == resume.tokens + [t for e in new for t in e.token_ids]
    assert progress.text == first.text + "".join(e.text for e in new)


async def test_without_the_cut_the_continuation_repeats_the_prompt() -> None:
    """The fake reproduces the bug the cut avoids (what vLLM does with such ids)."""
    whole = await run_bytes()
    engine = ByteEngine()
    cut = next(
        whole[:n]
        for n in range(2, len(whole))
        if engine.decode(progress_of(logged(whole[:n])).tokens).endswith(REPLACEMENT)
    )
    progress = progress_of(logged(cut))
    second = await run_bytes(Resume(progress.tokens, progress.text), attempt=2)
    first_text = next(e.text for e in second if isinstance(e, Delta) and e.text)
    assert first_text.startswith(ByteEngine.prompt_text)


async def test_a_stored_stop_token_ends_the_answer_without_generating() -> None:
    whole = await run_bytes()
    full = whole[-1]
    assert isinstance(full, Completed)
    # The worker died after storing its last delta (EOS included) but before its terminal.
    cut = whole[:-1]
    progress = progress_of(logged(cut))
    assert progress.tokens[-1] == EOS and progress.text == ANSWER
    resume = settled(progress)
    assert resume == Resume(progress.tokens, progress.text, finish_reason="stop")
    second = await run_bytes(resume, attempt=2)
    assert [e.type for e in second] == ["started", "completed"]
    done = second[-1]
    assert isinstance(done, Completed)
    assert done.finish_reason == "stop" and done.text == ANSWER and done.usage == full.usage
    assert client_text(cut + second) == ANSWER


def test_under_ignore_eos_a_stored_eos_is_an_ordinary_token() -> None:
    tokens = [BYTE0 + b for b in b"ok"] + [EOS]
    resume = settle_resume(Resume(tokens, "ok"), decode=ByteEngine().decode, prompt_ids=[], stop_token_ids=())
    assert resume == Resume(tokens, "ok")


def test_ids_that_do_not_give_the_stored_text_cannot_be_continued() -> None:
    engine = ByteEngine()
    tokens = [BYTE0 + b for b in "café".encode()]
    assert (
        settle_resume(Resume(tokens, "cafe"), decode=engine.decode, prompt_ids=[], stop_token_ids=()) is None
    )
    # Nothing but bytes of an incomplete character: nothing was shown, nothing is carried.
    assert settle_resume(
        Resume([BYTE0 + 0xC3], ""), decode=engine.decode, prompt_ids=[], stop_token_ids=()
    ) == Resume([], "")


def consumer(engine: Any) -> RequestConsumer:
    return RequestConsumer(
        WorkerSettings(capacity=1, worker_id="w"), cast(Any, engine), cast(Any, None), "m", lambda: None
    )


async def test_the_worker_cuts_back_or_resets_with_a_reason() -> None:
    engine = ByteEngine()
    tokens = [BYTE0 + b for b in "Hi é".encode()]
    stored = Progress(attempt=1, tokens=tokens[:-1], text="Hi ", engine_model="bytes")
    resume, reset = await consumer(engine)._continuation(byte_request(), stored)
    assert reset is None and resume == Resume(tokens[:-2], "Hi ")
    wrong = Progress(attempt=1, tokens=tokens, text="Ho é", engine_model="bytes")
    resume, reset = await consumer(engine)._continuation(byte_request(), wrong)
    assert resume is None and reset is not None and reset.startswith("resume_mismatch")
    ended = Progress(attempt=1, tokens=[*tokens, EOS], text="Hi é", engine_model="bytes")
    resume, reset = await consumer(engine)._continuation(byte_request(), ended)
    assert reset is None and resume is not None and resume.finish_reason == "stop"
    # Under ignore_eos, EOS is no end: the answer goes on after it.
    resume, reset = await consumer(engine)._continuation(byte_request(ignore_eos=True), ended)
    assert reset is None and resume == Resume([*tokens, EOS], "Hi é")


# -- The real tokenizer of the tiny model (byte-level BPE) ----------------------------------

TINY = Path(__file__).resolve().parents[2] / ".state" / "models" / "tiny-random"


@pytest.fixture(scope="module")
def tiny_engine() -> Any:
    if not (TINY / "tokenizer.json").exists():
        pytest.skip("the tiny model is not built (.state/models/tiny-random)")
    from transformers import AutoTokenizer

    from llmchat_worker.engine import VllmEngine
    from llmchat_worker.profiles import ModelProfile

    engine = VllmEngine(ModelProfile(alias="tiny-random", model=str(TINY)), TINY.parent)
    engine._tokenizer = AutoTokenizer.from_pretrained(str(TINY))
    engine._stop_token_ids = engine._eos_ids({"eos_token_id": [engine._tokenizer.eos_token_id]})
    return engine


def test_the_real_tokenizer_cut_gives_vllms_detokenizer_a_clean_start(tiny_engine: Any) -> None:
    """With the tiny model's tokenizer and the `DecodeStream` vLLM primes with prompt + resumed
    ids: at every cut, the cut-back ids continue into exactly the rest of the text."""
    from tokenizers.decoders import DecodeStream

    engine = tiny_engine
    backend = engine._tokenizer._tokenizer
    prompt = engine.encode_chat([ChatMessage(role="user", content="Tell me about the market on Saturday.")])
    answer = "Hi é€😀 ok"
    generated = engine._tokenizer.encode(answer, add_special_tokens=False)
    # Byte-level BPE splits these characters over several tokens.
    assert len(generated) > len(answer)

    def stream(primed: list[int], ids: list[int]) -> list[str]:
        decoder = DecodeStream(ids=primed, skip_special_tokens=True)
        return [decoder.step(backend, t) or "" for t in ids]

    pieces = stream(prompt, generated)
    assert "".join(pieces) == answer
    cut_inside = 0
    for cut in range(1, len(generated)):
        stored_text = "".join(pieces[:cut])  # what vLLM gave (and the client was sent)
        resume = settle_resume(
            Resume(generated[:cut], stored_text),
            decode=engine.decode,
            prompt_ids=prompt,
            stop_token_ids=engine.stop_token_ids,
        )
        assert resume is not None and resume.text == stored_text
        keep = len(resume.tokens)
        # Back to just after the last token that gave text: the next one starts a character.
        assert keep == min(k for k in range(cut + 1) if "".join(pieces[:k]) == stored_text)
        assert stored_text + "".join(stream(prompt + generated[:keep], generated[keep:])) == answer
        if keep < cut:
            cut_inside += 1
            # Uncut, vLLM's first text would repeat the prompt's.
            assert "Tell me about the market" in "".join(stream(prompt + generated[:cut], generated[cut:]))
    assert cut_inside >= 5
    # The answer's end: EOS as the last stored token finishes it.
    eos = engine._tokenizer.eos_token_id
    assert eos in engine.stop_token_ids
    ended = settle_resume(
        Resume([*generated, eos], answer),
        decode=engine.decode,
        prompt_ids=prompt,
        stop_token_ids=engine.stop_token_ids,
    )
    assert ended is not None and ended.finish_reason == "stop"
