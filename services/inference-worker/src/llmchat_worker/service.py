"""Running one chat request on the engine and turning it into events (no framework imports).

Invariants:
- exactly one terminal event per run (`completed`, `failed` or `cancelled`), always last;
- events of one attempt carry `seq` 0, 1, 2, ... in publish order (`started` is 0);
- the text in the terminal event equals the concatenation of the attempt's delta texts.

A redelivered attempt goes on from what earlier attempts stored (`Resume`), once
`settle_resume` has cut that back to where it can be continued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, TypedDict, runtime_checkable

from llmchat_common.contracts import (
    Cancelled,
    CancelReason,
    ChatMessage,
    ChatRequested,
    Choice,
    Completed,
    Delta,
    Failed,
    FunctionTool,
    GenerationParams,
    PromptLogprob,
    Released,
    Reset,
    ResponseFormat,
    Started,
    Timings,
    TokenLogprob,
    ToolCall,
    Usage,
)
from llmchat_worker import metrics
from llmchat_worker import tools as tooling
from llmchat_worker.errors import EngineFailure, RequestRejected
from llmchat_worker.fencing import claim_of
from llmchat_worker.profiles import ModelProfile

Terminal = Completed | Failed | Cancelled
Event = Started | Delta | Reset | Released | Terminal


class EventHeader(TypedDict):
    request_id: str
    attempt: int
    seq: int
    worker_id: str
    ts: float
    user_id: str | None
    api_key_id: str | None


@dataclass(frozen=True, slots=True)
class TokenChunk:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    # The choice (`n` > 1) these tokens belong to.
    index: int = 0
    # Asked for (`prompt_logprobs`): the prompt's, on the first chunk only.
    prompt_logprobs: list[PromptLogprob] | None = None


class EngineLike(Protocol):
    max_model_len: int
    model_path: str

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        """The prompt's token ids (the chat template renders `tools` when given)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """The text of token ids as the engine's detokenizer gives it (special tokens
        skipped); bytes of a character not yet complete come out as U+FFFD."""
        ...

    @property
    def stop_token_ids(self) -> Collection[int]:
        """Token ids that end a generation unless `ignore_eos` (EOS and the model's other
        end-of-sequence ids)."""
        ...

    def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        """`trace_headers` (W3C `traceparent`) make the engine's own request span a child of
        the caller's span."""
        ...

    async def abort(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How an engine with a tool-call parser runs a request's tool calling (vLLM's server's way)."""

    # What the output is constrained to (None: nothing).
    constraint: ResponseFormat | None
    skip_special_tokens: bool
    # The text that opens a call in the output, for a streaming reader to hold back; None: the
    # output is a bare forced call's JSON or plain text.
    marker: str | None
    # A finished choice's text and token ids -> its content without the calls, and the calls.
    parse: Callable[[str, list[int], int], tuple[str | None, list[ToolCall]]]


@runtime_checkable
class ToolCallParsing(Protocol):
    """An engine whose profile names a tool-call parser (vLLM's)."""

    def tool_plan(self, request: ChatRequested) -> ToolPlan | None: ...


@runtime_checkable
class CompletionEngine(Protocol):
    """An engine that serves legacy completions (`kind: completion`): a raw prompt, no chat
    template. An engine without it refuses them (the edge only sends them to chat models)."""

    def encode_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        """The prompt's token ids and its text as an echo shows it, both as vLLM's
        `/v1/completions` has them: a text is tokenized with the tokenizer's special tokens (a
        BOS, if the model has one) and echoed as given; token ids are taken as they are and
        echoed decoded, special tokens kept. Raises ValueError for an empty prompt or an id
        outside the vocabulary."""
        ...

    def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
        *,
        all_top: bool = False,
        prompt_logprobs: bool = False,
    ) -> AsyncIterator[TokenChunk]:
        """As `EngineLike.generate`; the legacy completions' log probabilities: `all_top`, every
        entry of a step (the sampled token's and the `logprobs` most likely: up to k + 1), and
        `prompt_logprobs`, the prompt's (on the first chunk)."""
        ...


class ServingEngine(EngineLike, Protocol):
    """What the worker process serves with: vLLM (`engine.VllmEngine`), or for benchmarks of
    the pipeline alone a fixed-rate token source (`synthetic.SyntheticEngine`)."""

    profile: ModelProfile

    def start(self) -> None: ...

    async def probe(self) -> None: ...

    def shutdown(self) -> None: ...

    def running(self) -> int: ...

    @property
    def dead(self) -> bool: ...


class EventSink(Protocol):
    async def emit(self, event: Event) -> None:
        """Hand the event to the connection in order, without awaiting the broker's ack
        (the sink bounds how many are in flight)."""

    async def emit_terminal(self, event: Terminal | Released) -> None:
        """Publish and await the ack: the request may be acked (or handed back) only after
        this returns."""


class EventWriter:
    """What every runner of one request attempt shares: the events' header (seq counted from 0
    per attempt) and how they go out (a terminal event carries the request's facts and is
    awaited). `RequestRunner` and `embeddings.EmbeddingRunner` build on it."""

    def __init__(
        self,
        request: ChatRequested,
        *,
        attempt: int,
        worker_id: str,
        sink: EventSink,
        clock: Callable[[], float],
    ) -> None:
        self.request = request
        self.attempt = attempt
        self.worker_id = worker_id
        self.sink = sink
        self.clock = clock
        self._seq = 0
        self._claimed = False

    @property
    def engine_key(self) -> str:
        return f"{self.request.request_id}-{self.attempt}"

    def _base(self) -> EventHeader:
        return {
            "request_id": self.request.request_id,
            "attempt": self.attempt,
            "seq": self._seq,
            "worker_id": self.worker_id,
            "ts": self.clock(),
            "user_id": self.request.user_id,
            "api_key_id": self.request.api_key_id,
        }

    async def _emit(self, event: Event) -> None:
        # Counted before the send awaits (a `started` awaits its ack): an event built meanwhile,
        # e.g. by a flush timer, takes the next seq, not this one's.
        self._seq += 1
        self._claimed = self._claimed or isinstance(event, Started)
        await self.sink.emit(event)

    async def _terminal(self, event: Terminal) -> Terminal:
        event = event.model_copy(update=self.request.facts())
        if self.attempt > 1 and not self._claimed:
            # A later attempt claims the request before it ends it (`fencing`).
            await self._emit(claim_of(event))
            event = event.model_copy(update={"seq": self._seq})
        self._seq += 1
        await self.sink.emit_terminal(event)
        return event

    async def _released(self, reason: str) -> None:
        released = Released(**self._base(), reason=reason)
        self._seq += 1
        await self.sink.emit_terminal(released)


@dataclass(frozen=True, slots=True)
class Resume:
    """Where an earlier attempt stopped: its generated token ids and their text."""

    tokens: list[int]
    text: str
    # Set when the earlier attempt had in fact finished (its last token ended the answer) but
    # died before its terminal event: this attempt only says so, it generates nothing.
    finish_reason: str | None = None


REPLACEMENT_CHAR = "\ufffd"
# A character is at most 4 bytes; a random or broken model may leave a longer run of bytes
# that are no text yet. Past this many trailing tokens without text, the answer starts over.
MAX_RESUME_TRIM = 32
# Prompt tokens decoded before the resumed ones, as the engine's detokenizer has them: some
# tokenizers (SentencePiece) drop a leading space when decoding from the very start.
DECODE_CONTEXT = 8


def settle_resume(
    resume: Resume,
    *,
    decode: Callable[[list[int]], str],
    prompt_ids: list[int],
    stop_token_ids: Collection[int],
) -> Resume | None:
    """What a new attempt can go on from, given what earlier attempts stored; None when it
    cannot (the stored ids do not give the stored text: the answer must start over).

    - The last stored token ended the answer (a stop token, with `stop_token_ids` empty under
      `ignore_eos`): the answer is complete; continuing would generate past its end.
    - The stored ids may end inside a multi-byte character (the engine holds back its bytes, so
      no text was stored or sent for them). The engine's detokenizer, primed with prompt + ids
      ending mid-character, would start the continuation with the whole prompt's text. So the
      ids are cut back to the longest prefix whose text is exactly the stored text (what the
      client was sent); the dropped tokens are generated again (the same ones with greedy
      sampling; with sampling, new ones, and no text was shown for the old).
    """
    tokens = resume.tokens
    if not tokens:
        return resume
    if tokens[-1] in stop_token_ids:
        return replace(resume, finish_reason="stop")
    context = prompt_ids[-DECODE_CONTEXT:]
    base = decode(context)
    if base.endswith(REPLACEMENT_CHAR):
        context, base = [], ""
    for keep in range(len(tokens), max(0, len(tokens) - MAX_RESUME_TRIM) - 1, -1):
        decoded = decode(context + tokens[:keep])
        if decoded.endswith(REPLACEMENT_CHAR) or not decoded.startswith(base):
            continue
        if decoded[len(base) :] == resume.text:
            return resume if keep == len(tokens) else Resume(tokens[:keep], resume.text)
    return None


@dataclass(frozen=True, slots=True)
class CoalesceConfig:
    max_tokens: int = 8
    max_ms: float = 10.0


class DeltaCoalescer:
    """Batches tokens into delta events without holding a slow stream back.

    A token goes out at once unless this stream's last event went out less than `max_ms` ago;
    then it waits until `max_ms` after that event (the runner arms a timer), or until
    `max_tokens` are waiting. The very first token always goes out alone (TTFT). So a stream
    whose tokens are further apart than `max_ms` gets one event per token, none delayed, and a
    fast one at most one event per `max_ms`, no token held back longer than that.
    """

    def __init__(self, config: CoalesceConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._text: list[str] = []
        self._ids: list[int] = []
        self._logprobs: list[TokenLogprob] | None = None
        self._last_sent: float | None = None

    def add(self, text: str, token_ids: list[int], logprobs: list[TokenLogprob] | None = None) -> bool:
        """Buffer a chunk; True when the buffer should be flushed now."""
        self._text.append(text)
        self._ids.extend(token_ids)
        if logprobs is not None:
            self._logprobs = [*(self._logprobs or []), *logprobs]
        return self._last_sent is None or len(self._ids) >= self._config.max_tokens or self.due_in() <= 0

    def due_in(self) -> float:
        """Seconds until what is buffered must go out."""
        if self._last_sent is None:
            return 0.0
        return self._last_sent + self._config.max_ms / 1000.0 - self._clock()

    def pending(self) -> bool:
        return bool(self._ids or self._text)

    def take(self) -> tuple[str, list[int]]:
        text, ids = "".join(self._text), self._ids
        self._text, self._ids = [], []
        self._last_sent = self._clock()
        return text, ids

    def take_logprobs(self) -> list[TokenLogprob] | None:
        """The log probabilities of what `take` returned (call it right after)."""
        logprobs, self._logprobs = self._logprobs, None
        return logprobs


@dataclass
class ChoiceState:
    """What one choice (`n` > 1) has generated so far."""

    index: int
    coalescer: DeltaCoalescer
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str = "stop"


class RequestRunner(EventWriter):
    def __init__(
        self,
        request: ChatRequested,
        *,
        attempt: int,
        worker_id: str,
        engine: EngineLike,
        sink: EventSink,
        coalesce: CoalesceConfig,
        resume: Resume | None = None,
        reset_reason: str | None = None,
        trace_headers: Mapping[str, str] | None = None,
        metrics_model: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(request, attempt=attempt, worker_id=worker_id, sink=sink, clock=clock)
        self.trace_headers = trace_headers
        # The `model` label of the worker's metrics (the alias it serves).
        self.metrics_model = metrics_model or request.model
        self._generated = metrics.GENERATED_TOKENS.labels(self.metrics_model)
        self.engine = engine
        self.cancel_reason: CancelReason | None = None
        # Set by `fail`: the platform ends the request (a full event log), not its caller.
        self.failure: RequestRejected | None = None
        self._failed_text = ""
        self._failed_usage: Usage | None = None
        self._coalesce = coalesce
        self._plan: ToolPlan | None = None
        self._plan_known = False
        # Tokens held back by the coalescer go out when this timer fires (its flush runs as a
        # task; `_flush` waits for it, so deltas keep their order and seq).
        self._flush_timer: asyncio.TimerHandle | None = None
        self._timer_flush: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()
        self._gen_task: asyncio.Task[str] | None = None
        self._prompt_tokens = 0
        # Failover: the answer goes on after what earlier attempts generated (their text is
        # part of this attempt's terminal text and usage, but not of its deltas); or, when it
        # cannot, starts over after a `reset` event.
        self.resume = resume or Resume([], "")
        self.reset_reason = reset_reason
        first = ChoiceState(0, DeltaCoalescer(coalesce), list(self.resume.tokens))
        first.text = [self.resume.text] if self.resume.text else []
        # One per choice (`n` > 1); choice 0 is the answer history stores and failover resumes.
        self._choices: dict[int, ChoiceState] = {0: first}
        self._tokens = first.tokens
        self._text = first.text
        self._started_at = 0.0
        # `completion` with `echo`: the prompt's text. With `logprobs` too, `started` waits for
        # the engine's first output, which brings the prompt's log probabilities.
        self._echo_text: str | None = None
        self._started_pending = False
        self._first_token_at: float | None = None
        self._last_token_at: float | None = None

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def prompt_tokens(self) -> int:
        return self._prompt_tokens

    def cancel(self, reason: CancelReason) -> None:
        if self.cancel_reason is None and self.failure is None:
            self.cancel_reason = reason
        self._stop_generating()

    def fail(self, code: str, message: str, *, text: str = "", usage: Usage | None = None) -> None:
        """Ends the request as failed and retriable, with the text so far unless it was
        cancelled first (`text` and `usage`: an earlier attempt's, before this one generates
        any)."""
        if self.cancel_reason is None and self.failure is None:
            self.failure = RequestRejected(code, message)
            self._failed_text = text
            self._failed_usage = usage
        self._stop_generating()

    def _stop_generating(self) -> None:
        if self._gen_task is not None and not self._gen_task.done():
            self._gen_task.cancel()

    async def run(self) -> Terminal:
        self._started_at = self.clock()
        if self.cancel_reason is None and self._started_at >= self.request.deadline:
            self.cancel_reason = "deadline"
        if self.failure is not None:
            return await self._finish_failed(self.failure, retriable=True)
        if self.cancel_reason is not None:
            return await self._finish_cancelled(self.cancel_reason)
        try:
            prompt_ids = await self._encode()
            max_tokens = self._max_tokens(len(prompt_ids))
        except RequestRejected as exc:
            return await self._terminal(
                Failed(**self._base(), code=exc.code, message=exc.message, retriable=False)
            )
        self._prompt_tokens = len(prompt_ids)
        remaining = max_tokens - len(self.resume.tokens)
        self._started_pending = (
            self._wants_prompt_logprobs() and self.resume.finish_reason is None and remaining > 0
        )
        if not self._started_pending:
            await self._start(self._started())
        if self.resume.finish_reason is not None:
            # The dead attempt had finished the answer but not stored its terminal event.
            return await self._terminal(
                Completed(
                    **self._base(),
                    finish_reason=self.resume.finish_reason,
                    text="".join(self._text),
                    usage=self._usage(),
                    timings=self._timings(),
                )
            )
        if remaining <= 0:
            # The dead attempt had generated everything but its terminal event.
            return await self._terminal(
                Completed(
                    **self._base(),
                    finish_reason="length",
                    text="".join(self._text),
                    usage=self._usage(),
                    timings=self._timings(),
                )
            )
        # Token ids, not re-tokenised text: with greedy sampling the continuation is the
        # answer an uninterrupted run would have given.
        self._gen_task = asyncio.create_task(self._generate(prompt_ids + self.resume.tokens, remaining))
        try:
            finish_reason = await asyncio.wait_for(
                self._gen_task, timeout=max(0.0, self.request.deadline - self.clock())
            )
        except TimeoutError:
            reason: CancelReason = self.cancel_reason or "deadline"
            await self._abort(reason)
            return await self._finish_cancelled(reason)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Our own task is being cancelled (shutdown): no terminal from here; the
                # engine drops the request when its generator is cancelled.
                metrics.ABORTS.labels(self.metrics_model, "shutdown").inc()
                raise
            if self.failure is not None:
                await self._abort(self.failure.code)
                return await self._finish_failed(self.failure, retriable=True)
            reason = self.cancel_reason or "client"
            await self._abort(reason)
            return await self._finish_cancelled(reason)
        except EngineFailure:
            raise
        except RequestRejected as exc:
            return await self._finish_failed(exc, retriable=False)
        except Exception as exc:  # noqa: BLE001 - one request's engine error must not kill the worker
            await self._flush()
            return await self._terminal(
                Failed(
                    **self._base(),
                    code="engine_error",
                    message=f"generation failed: {type(exc).__name__}",
                    retriable=False,
                    text="".join(self._text),
                    usage=self._usage(),
                    timings=self._timings(),
                )
            )
        if finish_reason == "cancelled" and self.failure is not None:
            await self._abort(self.failure.code)
            return await self._finish_failed(self.failure, retriable=True)
        if finish_reason == "cancelled" and self.cancel_reason is not None:
            await self._abort(self.cancel_reason)
            return await self._finish_cancelled(self.cancel_reason)
        await self._flush()
        if self._started_pending:
            self._started_pending = False
            await self._start(self._started())
        return await self._terminal(self._completed(finish_reason))

    async def _start(self, started: Started) -> None:
        """The attempt's claim (`started`), then, when it cannot go on from an earlier one,
        the `reset` that says the answer starts over (after the claim: the log takes the claim
        only if nothing came since this attempt read it)."""
        await self._emit(started)
        if self.reset_reason is not None:
            await self._emit(Reset(**self._base(), reason=self.reset_reason))

    def _started(self, prompt_logprobs: list[PromptLogprob] | None = None) -> Started:
        return Started(
            **(self._base() | self.request.facts()),  # type: ignore[arg-type]
            queue_ms=max(0.0, (self._started_at - self.request.created_at) * 1000.0),
            prompt_tokens=self._prompt_tokens,
            engine_model=self.engine.model_path,
            resumed_tokens=len(self.resume.tokens),
            resumed_chars=len(self.resume.text),
            tool_call_start=self._tool_call_start(),
            echo_text=self._echo_text,
            prompt_logprobs=prompt_logprobs,
        )

    def _wants_prompt_logprobs(self) -> bool:
        request = self.request
        return request.kind == "completion" and request.echo and request.params.logprobs is not None

    def _completion_engine(self) -> CompletionEngine | None:
        return self.engine if isinstance(self.engine, CompletionEngine) else None

    async def _abort(self, reason: str) -> None:
        await self.engine.abort(self.engine_key)
        metrics.ABORTS.labels(self.metrics_model, reason).inc()

    async def _encode(self) -> list[int]:
        if self.request.kind == "completion":
            return await self._encode_prompt()
        try:
            # In a thread: tokenizing a long prompt must not stall every other stream.
            if self.request.tools:
                return await asyncio.to_thread(
                    self.engine.encode_chat, self.request.messages, self.request.tools
                )
            return await asyncio.to_thread(self.engine.encode_chat, self.request.messages)
        except Exception as exc:
            raise RequestRejected("invalid_request", f"the messages do not fit this model: {exc}") from exc

    async def _encode_prompt(self) -> list[int]:
        """A legacy completion's raw prompt: no chat template."""
        engine, prompt = self._completion_engine(), self.request.prompt
        if engine is None:
            raise RequestRejected("invalid_request", "this model does not serve completions")
        if prompt is None:
            raise RequestRejected("invalid_request", "a completion request needs a prompt")
        try:
            ids, text = await asyncio.to_thread(engine.encode_prompt, prompt)
        except Exception as exc:
            raise RequestRejected("invalid_request", f"the prompt does not fit this model: {exc}") from exc
        if self.request.echo:
            self._echo_text = text
        return ids

    def _max_tokens(self, prompt_len: int) -> int:
        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise RequestRejected(
                "context_length_exceeded",
                f"the prompt has {prompt_len} tokens; this model's context is {limit} tokens",
            )
        wanted = self.request.params.max_tokens
        if wanted is None:
            return limit - prompt_len
        if prompt_len + wanted > limit:
            raise RequestRejected(
                "context_length_exceeded",
                f"prompt ({prompt_len} tokens) + max_tokens ({wanted}) exceeds this model's "
                f"context of {limit} tokens",
            )
        return wanted

    async def _generate(self, prompt_ids: list[int], max_tokens: int) -> str:
        try:
            return await self._generate_events(prompt_ids, max_tokens)
        finally:
            # What is still buffered goes out with the run's last flush, or not at all (an
            # engine failure): never from a timer after the run has moved on.
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None

    async def _generate_events(self, prompt_ids: list[int], max_tokens: int) -> str:
        request = self.request
        params = request.params
        plan = self._tool_plan()
        if plan is not None:
            params = params.model_copy(
                update={"response_format": plan.constraint, "skip_special_tokens": plan.skip_special_tokens}
            )
        elif (constraint := tooling.constraint(request)) != params.response_format:
            params = params.model_copy(update={"response_format": constraint})
        completion_engine = self._completion_engine() if request.kind == "completion" else None
        if completion_engine is not None:
            chunks = completion_engine.generate(
                self.engine_key,
                prompt_ids,
                params,
                max_tokens,
                request.priority,
                trace_headers=self.trace_headers,
                all_top=True,
                prompt_logprobs=self._wants_prompt_logprobs(),
            )
        else:
            chunks = self.engine.generate(
                self.engine_key,
                prompt_ids,
                params,
                max_tokens,
                request.priority,
                trace_headers=self.trace_headers,
            )
        async for chunk in chunks:
            if self._started_pending:
                self._started_pending = False
                await self._start(self._started(chunk.prompt_logprobs))
            now = self.clock()
            choice = self._choice(chunk.index)
            if chunk.token_ids:
                if self._first_token_at is None:
                    self._first_token_at = now
                self._last_token_at = now
                choice.tokens.extend(chunk.token_ids)
                self._generated.inc(len(chunk.token_ids))
            choice.text.append(chunk.text)
            if chunk.logprobs is not None:
                choice.logprobs = [*(choice.logprobs or []), *chunk.logprobs]
            if choice.coalescer.add(chunk.text, chunk.token_ids, chunk.logprobs):
                await self._flush()
            elif self._flush_timer is None:
                self._flush_timer = asyncio.get_running_loop().call_later(
                    max(0.0, choice.coalescer.due_in()), self._on_flush_timer
                )
            if chunk.finish_reason is not None:
                choice.finish_reason = chunk.finish_reason
            if self.cancel_reason is not None:
                # The task's cancellation can be swallowed by an await that shields it (the
                # broker client's publish); the flag is the contract.
                return "cancelled"
        return self._choices[0].finish_reason

    def _choice(self, index: int) -> ChoiceState:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = ChoiceState(index, DeltaCoalescer(self._coalesce))
        return choice

    def _tool_plan(self) -> ToolPlan | None:
        """The engine's way of running this request's tool calls (its profile's parser), once."""
        if self._plan_known:
            return self._plan
        self._plan_known = True
        if self.request.tools_active() and isinstance(self.engine, ToolCallParsing):
            self._plan = self.engine.tool_plan(self.request)
        return self._plan

    def _tool_call_start(self) -> str | None:
        plan = self._tool_plan()
        return None if plan is None else plan.marker

    def _outcome(self, choice: ChoiceState, engine_reason: str) -> Choice:
        """A finished choice as OpenAI clients read it: the tool calls in its text, if any."""
        text = "".join(choice.text)
        content: str | None = None
        plan = self._tool_plan()
        calls: list[ToolCall] | None
        if plan is not None:
            parsed, calls = plan.parse(text, choice.tokens, choice.index)
            if calls or self.request.tool_choice != "auto":
                content = parsed or ""
        else:
            calls = tooling.forced_calls(self.request, text, choice.index)
            if calls is not None:
                content = ""
        calls = calls or []
        if calls and not self.request.parallel_tool_calls:
            calls = calls[:1]
        return Choice(
            index=choice.index,
            text=text,
            finish_reason=tooling.finish_reason(self.request, engine_reason, calls),
            tool_calls=calls,
            content=content,
            logprobs=choice.logprobs,
            completion_tokens=len(choice.tokens),
        )

    def _completed(self, finish_reason: str) -> Completed:
        first = self._outcome(self._choices[0], finish_reason)
        choices = (
            [first, *(self._outcome(c, c.finish_reason) for i, c in sorted(self._choices.items()) if i)]
            if self.request.params.n > 1
            else []
        )
        return Completed(
            **self._base(),
            finish_reason=first.finish_reason,
            text=first.text,
            usage=self._usage(),
            timings=self._timings(),
            tool_calls=first.tool_calls,
            content=first.content,
            logprobs=first.logprobs,
            echo_text=self._echo_text,
            choices=choices,
        )

    async def release(self, reason: str) -> None:
        """Hands the unfinished request back on purpose: what it generated is stored (so the
        next attempt continues from all of it), then a `released` event says so."""
        await self._flush()
        await self._released(reason)

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        previous = self._timer_flush

        async def send() -> None:
            if previous is not None:
                await previous
            await self._send_pending()

        self._timer_flush = asyncio.ensure_future(send())

    async def _flush(self) -> None:
        """Everything buffered goes out now, after any timer flush under way (whose failure,
        e.g. a publish error, is raised here)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._timer_flush is not None:
            task, self._timer_flush = self._timer_flush, None
            await task
        await self._send_pending()

    async def _send_pending(self) -> None:
        async with self._sending:
            for index, choice in sorted(self._choices.items()):
                coalescer = choice.coalescer
                if coalescer.pending():
                    text, ids = coalescer.take()
                    logprobs = coalescer.take_logprobs()
                    await self._emit(
                        Delta(**self._base(), text=text, token_ids=ids, logprobs=logprobs, index=index)
                    )

    async def _finish_cancelled(self, reason: CancelReason) -> Terminal:
        await self._flush()
        return await self._terminal(
            Cancelled(
                **self._base(),
                reason=reason,
                text="".join(self._text),
                usage=self._usage(),
                timings=self._timings(),
            )
        )

    async def _finish_failed(self, failure: RequestRejected, *, retriable: bool) -> Terminal:
        await self._flush()
        return await self._terminal(
            Failed(
                **self._base(),
                code=failure.code,
                message=failure.message,
                param=failure.param,
                retriable=retriable,
                text="".join(self._text) or self._failed_text,
                usage=self._failed_usage or self._usage(),
                timings=self._timings(),
            )
        )

    def _usage(self) -> Usage:
        generated = sum(len(choice.tokens) for choice in self._choices.values())
        return Usage(prompt_tokens=self._prompt_tokens, completion_tokens=generated)

    def _timings(self) -> Timings:
        created = self.request.created_at
        end = self.clock()
        first, last = self._first_token_at, self._last_token_at
        n = len(self._tokens) - len(self.resume.tokens)  # generated by this attempt
        return Timings(
            queue_ms=max(0.0, (self._started_at - created) * 1000.0),
            ttft_ms=None if first is None else (first - created) * 1000.0,
            tpot_ms=(last - first) * 1000.0 / (n - 1) if first and last and n > 1 else None,
            e2e_ms=(end - created) * 1000.0,
        )
