"""The worker's messaging: the pull loop over CHAT_REQUESTS, the event sink, cancels, heartbeats.

The pull loop is plain nats-py on purpose: it fetches only as many requests as the engine has
free slots, so no request waits in a local buffer without in-progress heartbeats (FastStream's
concurrent pull subscriber prefetches into an in-memory queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import ValidationError

from llmchat_common import subjects
from llmchat_common.contracts import (
    CancelRequest,
    ChatRequested,
    Delta,
    Failed,
    HardwareInfo,
    ModelCapabilities,
    Released,
    ServedModel,
    Started,
    SwitchStatus,
    Usage,
    WorkerInfo,
    WorkerStateName,
    parse_request,
)
from llmchat_common.log_space import LogSpace
from llmchat_common.logging import log_context
from llmchat_common.messaging import cancels_kv, jetstream, nats_client, registry_kv, served_kv
from llmchat_common.request_log import LogUnavailable, Progress, progress_of, read_request_log
from llmchat_common.telemetry import attached, consumer_span, extract, inject, record_error, tracer
from llmchat_worker import metrics
from llmchat_worker.embedding_engine import EmbeddingEngine
from llmchat_worker.embeddings import EmbeddingRunner, serves_embeddings
from llmchat_worker.errors import EngineFailure, Superseded
from llmchat_worker.fencing import CLAIM_TRIES, Fence, claim_of, is_fenced
from llmchat_worker.profiles import ModelProfile
from llmchat_worker.publisher import EventPublisher
from llmchat_worker.service import (
    CoalesceConfig,
    CompletionEngine,
    Event,
    RequestRunner,
    Resume,
    ServingEngine,
    Terminal,
    settle_resume,
)
from llmchat_worker.settings import WorkerSettings
from llmchat_worker.tracing import generate_attributes, publish_time, record_outcome, trace_queue_wait

log = logging.getLogger(__name__)
VERSION = "0.1.0"


class NatsEventSink:
    """Events go out through the worker's `EventPublisher`: batched writes, no per-event ack;
    the `started` and terminal events are published after them and their acks awaited, under
    the request's fence (`fencing`): the log refuses them if the request moved on, and this
    attempt is then `Superseded`.

    Every event carries the trace context it was given (the request's `generate` span), so
    the consumers of the events (edge, history, metrics) join the request's trace."""

    def __init__(
        self,
        publisher: EventPublisher,
        trace_headers: Mapping[str, str] | None = None,
        fence: Fence | None = None,
    ) -> None:
        self._publisher = publisher
        self._trace_headers = dict(trace_headers or {})
        self._fence = fence

    def for_attempt(self, trace_headers: Mapping[str, str], fence: Fence) -> NatsEventSink:
        """The same connection, publishing one attempt's events with its trace headers."""
        return NatsEventSink(self._publisher, trace_headers, fence)

    def _args(self, event: Event) -> tuple[str, bytes, dict[str, str] | None]:
        subject = subjects.event_subject(event.request_id, event.type)
        if isinstance(event, Delta):
            # Deltas, one per token or few, go bare: they are never published twice (no id to
            # de-duplicate by; a new attempt has ids of its own), no reader makes spans of
            # them (the request's trace is on its other events), and headers cost the broker
            # and every reader a parse per token.
            return subject, event.model_dump_json().encode(), None
        headers = {
            **self._trace_headers,
            "Nats-Msg-Id": subjects.msg_id_for_event(event.request_id, event.attempt, event.seq),
        }
        return subject, event.model_dump_json().encode(), headers

    async def emit(self, event: Event) -> None:
        if isinstance(event, Started):
            await self._fenced(event)
        else:
            self._publisher.publish(*self._args(event))

    async def emit_terminal(self, event: Terminal | Released) -> None:
        await self._fenced(event)

    async def _fenced(self, event: Started | Terminal | Released) -> None:
        subject, payload, headers = self._args(event)
        fence = self._fence
        if fence is not None:
            headers = {**(headers or {}), **fence.headers()}
        for _ in range(CLAIM_TRIES):
            try:
                sequence = await self._publisher.publish_acked(subject, payload, headers)
                break
            except Exception as exc:
                if not is_fenced(exc):
                    raise
                refused = Superseded(f"the log refused attempt {event.attempt}'s {event.type}")
                claim = fence is not None and isinstance(event, Started) and fence.started_seq is None
                if not claim or fence is None or not await fence.only_older_since(self._publisher.nc):
                    raise refused from exc
                headers = {**(headers or {}), **fence.headers()}
        else:
            raise Superseded(f"attempt {event.attempt} could not claim the request")
        if fence is not None and isinstance(event, Started):
            fence.started_seq = sequence


# A fetch for messages the consumer says are waiting returns at once; this bounds the rare case
# where another worker took them first (nats-py then waits for new ones until the timeout).
BACKLOG_FETCH_TIMEOUT_S = 0.05


def _pending_after(msgs: list[Msg]) -> int:
    """How many more messages wait for the consumer, as the last delivered one says."""
    try:
        return int(msgs[-1].metadata.num_pending or 0) if msgs else 0
    except Exception:  # noqa: BLE001 - not a JetStream message (tests)
        return 0


def capabilities(profile: ModelProfile) -> ModelCapabilities:
    """What the edge may send this model: tool calls and JSON output on every chat model (the
    forced ones by constrained decoding; `auto` reads calls with the profile's parser, if it
    names one), what its profile declares for the rest."""
    if profile.kind == "embedding":
        return ModelCapabilities(kind="embedding", tools=False, json_output=False, modalities=["text"])
    return ModelCapabilities(kind="chat", modalities=list(profile.modalities), fim=profile.fim)


def _embedding_capabilities(engine: object) -> ModelCapabilities | None:
    """An embedding engine's own (its vector size is known once it has started)."""
    return engine.capabilities() if isinstance(engine, EmbeddingEngine) else None


# A full event log (llmchat_common.log_space): retriable, once the log has room again.
LOG_FULL = ("log_full", "the event log is full; retry later")
LOG_CHECK_INTERVAL_S = 1.0


class RequestConsumer:
    def __init__(
        self,
        settings: WorkerSettings,
        engine: ServingEngine,
        broker: NatsBroker,
        alias: str,
        on_fatal: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.broker = broker
        self.alias = alias
        self.token = subjects.model_token(alias)
        self.capacity = settings.capacity or engine.profile.max_num_seqs
        self.on_fatal = on_fatal
        self.runners: dict[str, RequestRunner | EmbeddingRunner] = {}
        self.started_at = time.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._log_watch_task: asyncio.Task[None] | None = None
        self._cancels: KeyValue | None = None
        self._registry: KeyValue | None = None
        self._sink: NatsEventSink | None = None
        self._publisher: EventPublisher | None = None
        self._psub: JetStreamContext.PullSubscription | None = None
        self._log_space: LogSpace | None = None
        self._fatal = False
        self.ready = False
        # What the registry entry says besides the load: `draining` once a model switch has
        # begun (`llmchat_worker.switching`), the last switch, the machine.
        self.state: WorkerStateName = "ready"
        self.switch: SwitchStatus | None = None
        self.hardware: HardwareInfo | None = None
        self._served: KeyValue | None = None
        self._release_reason = "shutdown"
        self.tracer = tracer("llmchat_worker")
        metrics.init_model(alias, self.capacity)

    async def start(self) -> None:
        js = jetstream(self.broker)
        linger_s = self.settings.publish_linger_ms / 1000.0
        self._publisher = EventPublisher(nats_client(self.broker), js, linger_s)
        self._sink = NatsEventSink(self._publisher)
        replicas = self.settings.nats.replicas
        self._cancels = await cancels_kv(js, replicas)
        self._registry = await registry_kv(js, replicas)
        self._served = await served_kv(js, replicas)
        self._log_space = LogSpace(js, subjects.EVENTS_STREAM, self.settings.nats.events_reserve_bytes)
        durable = subjects.worker_consumer(self.token)
        await js.add_consumer(
            subjects.REQUESTS_STREAM,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=subjects.request_subject(self.token),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.settings.ack_wait_s,
                max_deliver=self.settings.max_deliver,
                max_ack_pending=self.settings.max_ack_pending,
            ),
        )
        self._psub = await js.pull_subscribe_bind(durable=durable, stream=subjects.REQUESTS_STREAM)
        await self._heartbeat_once()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())
        self._log_watch_task = asyncio.create_task(self._watch_log_space())
        self._loop_task = asyncio.create_task(self._pull_loop(self._psub))
        self.ready = True

    async def drain(
        self, *, timeout_s: float | None = None, reason: str = "shutdown", leave_registry: bool = True
    ) -> None:
        """Stop pulling, let running requests finish (bounded; past it they are released and
        continue elsewhere), then leave the registry (a model switch keeps the entry: it
        shows the switch's progress)."""
        self._release_reason = reason
        self.ready = False
        self._stopping.set()
        self._slot_free.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._psub is not None:
            # A pull subscription left open makes the connection's drain wait forever.
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
        log.info("draining", extra={"running": len(self._tasks)})
        if self._tasks:
            bound = self.settings.drain_timeout_s if timeout_s is None else timeout_s
            _, pending = await asyncio.wait(set(self._tasks), timeout=bound)
            for task in pending:
                task.cancel()  # not acked: JetStream redelivers them to another worker
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.close()
        for loop in (self._heartbeat_task, self._log_watch_task):
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        if self._registry is not None and leave_registry:
            with contextlib.suppress(Exception):
                await self._registry.delete(subjects.registry_key(self.token, self.settings.worker_id))

    async def _stop_pulling_fatal(self) -> None:
        """Stop fetching before handing requests back, so none is redelivered to this dying
        worker (each delivery counts against max_deliver)."""
        if self._fatal:
            return
        self._fatal = True
        self.ready = False
        self._stopping.set()
        self._slot_free.set()
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
        self.on_fatal()

    def cancel(self, request: CancelRequest, headers: Mapping[str, str] | None = None) -> None:
        runner = self.runners.get(request.request_id)
        if runner is None:
            return  # another worker's request (every worker hears every cancel): no span
        attributes = {"llmchat.request_id": request.request_id, "llmchat.cancel_reason": request.reason}
        with (
            log_context(request_id=request.request_id, user_id=runner.request.user_id),
            consumer_span(self.tracer, "cancel", headers, attributes),
        ):
            log.info("cancelling request", extra={"reason": request.reason})
            runner.cancel(request.reason)

    async def _pull_loop(self, psub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            free = self.capacity - len(self._tasks)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                # One at a time while waiting: nats-py's batch fetch lingers until the batch is
                # full or its timeout ends once one message has arrived.
                msgs = await psub.fetch(batch=1, timeout=self.settings.fetch_timeout_s)
            except (TimeoutError, NatsTimeoutError):
                continue
            except Exception as exc:  # noqa: BLE001 - reconnects are handled by the client
                log.warning("fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            self._start(msgs)
            # A backlog (each message says how many more wait) comes in one round trip for as
            # many as there are free slots, not one round trip each: on a busy event loop a
            # round trip takes several turns, and 64 requests queued at once waited up to a
            # second behind each other (bench/compare.py, concurrency 64).
            backlog = _pending_after(msgs)
            while backlog and not self._stopping.is_set():
                free = self.capacity - len(self._tasks)
                if free <= 0:
                    break
                try:
                    msgs = await psub.fetch(batch=min(free, backlog), timeout=BACKLOG_FETCH_TIMEOUT_S)
                except (TimeoutError, NatsTimeoutError):
                    break  # another worker took them
                except Exception as exc:  # noqa: BLE001
                    log.warning("fetch failed", extra={"error": repr(exc)})
                    break
                self._start(msgs)
                backlog = _pending_after(msgs)

    def _start(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            task = asyncio.create_task(self._handle(msg))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()

    async def _handle(self, msg: Msg) -> None:
        in_flight = metrics.IN_FLIGHT.labels(self.alias)
        in_flight.inc()
        try:
            await self._handle_message(msg)
        finally:
            in_flight.dec()

    def _count(self, outcome: metrics.Outcome) -> None:
        metrics.REQUESTS.labels(self.alias, outcome).inc()

    async def _handle_message(self, msg: Msg) -> None:
        if self._fatal:
            await msg.nak()
            self._count("released")
            return
        pulled = time.time()
        attempt = int(msg.metadata.num_delivered)
        parent = extract(msg.headers)
        try:
            request = parse_request(msg.data, log_seq=msg.metadata.sequence.stream)
        except (ValidationError, ValueError):
            with attached(parent):
                log.error("malformed request dropped", extra={"subject": msg.subject})
            await msg.term()
            self._count("failed")
            return
        # The request's span in this worker: current while it runs, so log lines carry its
        # trace, and the parent of the engine's span and of the published events.
        with (
            log_context(request_id=request.request_id, user_id=request.user_id),
            self.tracer.start_as_current_span(
                "generate",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=generate_attributes(
                    request, model=self.alias, attempt=attempt, worker_id=self.settings.worker_id
                ),
                record_exception=False,
            ) as span,
        ):
            # The publisher's span is the parent of both; a request without trace context gets
            # a new trace, rooted at `generate`.
            has_parent = trace.get_current_span(parent).get_span_context().is_valid
            queue_wait = trace_queue_wait(
                self.tracer,
                parent if has_parent else trace.set_span_in_context(span),
                request,
                model=self.alias,
                attempt=attempt,
                published=publish_time(msg),
                pulled=pulled,
            )
            await self._run(msg, request, attempt, span, queue_wait)

    async def _run(
        self, msg: Msg, request: ChatRequested, attempt: int, span: Span, queue_wait: float | None
    ) -> None:
        assert self._sink is not None
        # Once per request: the engine's span and every event published join this span.
        trace_headers = inject({})
        resume: Resume | None = None
        reset_reason: str | None = None
        lost: tuple[str, Progress | None] | None = None  # (why it cannot continue, the answer so far)
        # Where the request's log ends as this attempt sees it (its fence): nothing for a
        # first delivery.
        position = 0
        progress: Progress | None = None
        if attempt > 1:
            try:
                logged = await read_request_log(nats_client(self.broker), request.request_id)
                progress = progress_of(logged)
                position = logged[-1].stream_seq if logged else 0
            except LogUnavailable:
                # The claim (`started`) then fails unless the log really is empty.
                progress = None
        sink = self._sink.for_attempt(trace_headers, Fence(request.request_id, position, attempt))
        if attempt > 1:
            if progress is not None and progress.finished:
                # A previous attempt stored its terminal event but its ack was lost: done.
                await msg.ack()
                span.set_attribute("llmchat.outcome", "duplicate")
                log.info("request already finished", extra={"attempt": attempt})
                return
            if progress is not None and progress.crashed_attempts >= self.settings.poison_after_crashes:
                try:
                    poisoned = await self._fail_poison(request, attempt, progress, sink)
                except Superseded:
                    await self._superseded(msg, request, attempt, span)
                    return
                await msg.ack()
                metrics.FAILOVERS.labels(self.alias, "poisoned").inc()
                self._count("failed")
                record_outcome(span, poisoned)
                return
            resume, reset_reason = await self._continuation(request, progress)
            if reset_reason and request.no_reset:
                # Its text may have been shown (a streamed or background response): it ends
                # failed, with that text, rather than start over and show other text.
                lost = (reset_reason, progress)
                reset_reason = None
            metrics.FAILOVERS.labels(
                self.alias, "reset" if reset_reason else "lost" if lost else "continued"
            ).inc()
            if reset_reason:
                span.set_attribute("llmchat.reset_reason", reset_reason)
        resumed_tokens = len(resume.tokens) if resume is not None else 0
        span.set_attribute("llmchat.resumed_tokens", resumed_tokens)
        runner: RequestRunner | EmbeddingRunner
        if serves_embeddings(request, self.engine):
            # The same consumer; only the work per request differs (no deltas, no resume).
            runner = EmbeddingRunner(
                request,
                attempt=attempt,
                worker_id=self.settings.worker_id,
                engine=self.engine,
                sink=sink,
                trace_headers=trace_headers,
                metrics_model=self.alias,
                max_event_bytes=self.settings.nats.max_msg_bytes,
            )
        else:
            runner = RequestRunner(
                request,
                attempt=attempt,
                worker_id=self.settings.worker_id,
                engine=self.engine,
                sink=sink,
                coalesce=CoalesceConfig(self.settings.delta_max_tokens, self.settings.delta_max_ms),
                resume=resume,
                reset_reason=reset_reason,
                trace_headers=trace_headers,
                metrics_model=self.alias,
            )
        if await self._cancelled_while_queued(request):
            runner.cancel("client")
        elif isinstance(runner, RequestRunner) and await self._log_full():
            runner.fail(*LOG_FULL)
        elif isinstance(runner, RequestRunner) and lost is not None:
            why, so_far = lost
            runner.fail(
                "worker_lost",
                f"the worker serving this answer was lost and it cannot continue where it stopped "
                f"({why}); retry",
                # What the lost attempts generated (and were charged for, as a poisoned one).
                text=so_far.text if so_far is not None else "",
                usage=Usage(prompt_tokens=so_far.prompt_tokens, completion_tokens=len(so_far.tokens))
                if so_far is not None
                else None,
            )
        self.runners[request.request_id] = runner
        log.info(
            "request started",
            extra={
                "attempt": attempt,
                "model": self.alias,
                "kind": request.kind,
                "queue_wait_ms": None if queue_wait is None else round(queue_wait * 1000.0, 1),
                "resumed_tokens": resumed_tokens,
            },
        )
        keepalive = asyncio.create_task(self._keep_in_progress(msg))
        try:
            terminal = await runner.run()
        except Superseded:
            await self._superseded(msg, request, attempt, span)
            return
        except EngineFailure:
            log.critical("engine died", extra={"attempt": attempt})
            span.set_attribute("llmchat.outcome", "released")
            span.set_status(Status(StatusCode.ERROR, "engine died"))
            self._count("released")
            await self._stop_pulling_fatal()
            await msg.nak()
            return
        except asyncio.CancelledError:
            # Drain timeout or shutdown: hand the request back for another worker, which
            # continues it (this attempt is no crash).
            span.set_attribute("llmchat.outcome", "released")
            self._count("released")
            log.info("request released", extra={"attempt": attempt, "reason": self._release_reason})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.release(self._release_reason), timeout=5)
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:  # noqa: BLE001 - publish failures etc.
            record_error(span, exc)
            span.set_attribute("llmchat.outcome", "released")
            self._count("released")
            await self._fail_unexpected(runner, msg, exc)
            return
        finally:
            keepalive.cancel()
            self.runners.pop(request.request_id, None)
        await msg.ack()
        self._count(terminal.type)
        record_outcome(span, terminal, prompt_tokens=runner.prompt_tokens)
        log.info(
            "request finished",
            extra={
                "attempt": attempt,
                "outcome": terminal.type,
                "finish_reason": getattr(terminal, "finish_reason", None),
                "reason": getattr(terminal, "reason", None) or getattr(terminal, "code", None),
                "prompt_tokens": terminal.usage.prompt_tokens,
                "completion_tokens": terminal.usage.completion_tokens,
                "e2e_ms": round(terminal.timings.e2e_ms, 1),
            },
        )

    async def _superseded(self, msg: Msg, request: ChatRequested, attempt: int, span: Span) -> None:
        """The log refused this attempt's claim or outcome (`fencing`). If a newer attempt owns
        the request, or it has ended, this one leaves it alone: no ack, no hand-back (the
        message is the newer delivery's). If only an older attempt was still talking when this
        one claimed, the request is handed back to be tried again shortly."""
        span.set_attribute("llmchat.outcome", "superseded")
        self._count("superseded")
        try:
            progress: Progress | None = progress_of(
                await read_request_log(nats_client(self.broker), request.request_id)
            )
        except LogUnavailable:
            progress = None
        moved_on = progress is None or progress.finished or progress.attempt > attempt
        log.warning(
            "attempt superseded",
            extra={
                "attempt": attempt,
                "newest_attempt": None if progress is None else progress.attempt,
                "finished": None if progress is None else progress.finished,
            },
        )
        if not moved_on:
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _fail_unexpected(
        self, runner: RequestRunner | EmbeddingRunner, msg: Msg, exc: Exception
    ) -> None:
        """Hand the request back; after its last delivery JetStream's advisory ends it
        `failed` (see fail_exhausted_request)."""
        log.error("request failed", extra={"error": repr(exc)})
        with contextlib.suppress(Exception):
            await msg.nak(delay=1.0)

    async def _continuation(
        self, request: ChatRequested, progress: Progress | None
    ) -> tuple[Resume | None, str | None]:
        """Go on from the tokens earlier attempts stored, or say why the answer starts over
        (the reset tells readers to drop what they hold)."""
        if progress is None:
            return None, "the stored answer could not be read"
        if not progress.tokens and not progress.text:
            return None, None  # nothing was generated yet: a plain new attempt
        if not self.settings.continuation:
            return None, "continuation is turned off on this worker"
        if reason := _no_continuation(request):
            return None, reason
        if request.params.stop:
            # The engine holds back text that might begin a stop sequence, but not its token
            # ids: the stored text may lag the stored tokens, and a stop sequence may straddle
            # the cut. Continuing could lose text or miss the stop.
            return None, "stop sequences: the stored text may lag its tokens"
        if progress.broken is not None:
            return None, progress.broken
        if progress.engine_model is not None and progress.engine_model != self.engine.model_path:
            return None, "the earlier attempt ran another engine model"
        stored = Resume(progress.tokens, progress.text)
        # In a thread: it tokenizes the prompt and decodes the answer so far.
        resume = await asyncio.to_thread(self._settle, request, stored)
        if resume is None:
            return None, "resume_mismatch: the stored token ids do not give the stored text"
        if len(resume.tokens) < len(stored.tokens):
            log.info(
                "resumed tokens cut back to a character boundary",
                extra={"stored_tokens": len(stored.tokens), "resumed_tokens": len(resume.tokens)},
            )
        return resume, None

    def _settle(self, request: ChatRequested, stored: Resume) -> Resume | None:
        try:
            if request.kind == "completion" and request.prompt is not None:
                # A raw prompt (the runner's `_encode_prompt`); the decode context below.
                assert isinstance(self.engine, CompletionEngine)
                prompt_ids = self.engine.encode_prompt(request.prompt)[0]
            else:
                prompt_ids = self.engine.encode_chat(request.messages, request.tools or None)
        except Exception:  # noqa: BLE001 - the run itself rejects such a request
            prompt_ids = []
        try:
            return settle_resume(
                stored,
                decode=self.engine.decode,
                prompt_ids=prompt_ids,
                stop_token_ids=() if request.params.ignore_eos else self.engine.stop_token_ids,
            )
        except Exception as exc:  # noqa: BLE001 - ids the tokenizer cannot decode: start over
            log.warning("stored tokens could not be decoded", extra={"error": repr(exc)})
            return None

    async def _fail_poison(
        self, request: ChatRequested, attempt: int, progress: Progress, sink: NatsEventSink
    ) -> Failed:
        """A request whose attempts keep dying with their workers is not run again: it might
        be what kills them. Its client gets a clear error instead of a loop, and the answer so
        far with its usage."""
        crashed = progress.crashed_attempts
        log.error("poison request failed", extra={"attempt": attempt, "crashed": crashed})
        event = Failed(
            request_id=request.request_id,
            attempt=attempt,
            seq=0,
            worker_id=self.settings.worker_id,
            ts=time.time(),
            **request.facts(),
            code="worker_crashed",
            message=f"the request was stopped after {crashed} attempts whose workers died while "
            "running it; it is not retried",
            retriable=False,
            text=progress.text,
            usage=Usage(prompt_tokens=progress.prompt_tokens, completion_tokens=len(progress.tokens)),
        )
        # Its claim first: an older attempt that still talks is fenced out (`fencing`).
        await sink.emit(claim_of(event))
        event = event.model_copy(update={"seq": 1})
        await sink.emit_terminal(event)
        return event

    async def _cancelled_while_queued(self, request: ChatRequested) -> bool:
        assert self._cancels is not None
        try:
            await self._cancels.get(request.request_id)
        except KeyNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001 - the live cancel and the deadline still apply
            log.warning("cancel lookup failed", extra={"request_id": request.request_id, "error": repr(exc)})
            return False
        return True

    async def _keep_in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.settings.in_progress_interval_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            model=self.alias,
            engine_model=self.engine.model_path,
            worker_id=self.settings.worker_id,
            capacity=self.capacity,
            running=self.engine.running(),
            max_model_len=self.engine.max_model_len,
            version=VERSION,
            heartbeat_at=time.time(),
            started_at=self.started_at,
            capabilities=_embedding_capabilities(self.engine) or capabilities(self.engine.profile),
            state=self.state,
            switch=self.switch,
            hardware=self.hardware,
        )

    async def heartbeat(self) -> None:
        await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        assert self._registry is not None
        key = subjects.registry_key(self.token, self.settings.worker_id)
        info = self.info()
        await self._registry.put(key, info.model_dump_json().encode())
        if self._served is not None and info.state == "ready":
            # The edge still knows the model, and what it takes, once its last worker is gone.
            served = ServedModel(
                model=info.model,
                max_model_len=info.max_model_len,
                capabilities=info.capabilities,
                seen_at=info.heartbeat_at,
            )
            await self._served.put(subjects.served_key(info.model), served.model_dump_json().encode())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            if self.engine.dead:
                log.critical("engine is dead")
                await self._stop_pulling_fatal()
                return
            try:
                await self._heartbeat_once()
            except Exception as exc:  # noqa: BLE001 - the next beat retries
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    async def _watch_log_space(self) -> None:
        """While answers run, ends them once the event log is nearly full (each still has room
        for its terminal event)."""
        while True:
            await asyncio.sleep(LOG_CHECK_INTERVAL_S)
            if self.runners and await self._log_full():
                self._end_running(*LOG_FULL)

    async def _log_full(self) -> bool:
        return self._log_space is not None and await self._log_space.low()

    def _end_running(self, code: str, message: str) -> None:
        """Fails every running answer (each ends with its text so far)."""
        for runner in self.runners.values():
            if isinstance(runner, RequestRunner):
                runner.fail(code, message)
        log.error("running requests ended", extra={"code": code, "requests": len(self.runners)})


def _no_continuation(request: ChatRequested) -> str | None:
    """Why a request's answer cannot go on from where a dead attempt stopped, if it cannot:
    constrained decoding (a forced tool call, a JSON format) would start its grammar over in the
    middle of the JSON; the log probabilities and the other choices of the dead attempt are not
    all in its deltas' order of the answer. These answers start over (with greedy sampling,
    the same answer again)."""
    params = request.params
    if request.tools_active():
        return "tool calling: the tool-call format starts over"
    if params.response_format is not None and params.response_format.type != "text":
        return "structured output: constrained decoding starts its grammar over"
    if params.n > 1:
        return "several choices: each starts over"
    if params.logprobs is not None:
        return "log probabilities: the answer starts over with them"
    return None
