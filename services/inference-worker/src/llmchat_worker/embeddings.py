"""Running one embedding request (kind `embedding`) and turning it into events.

The consumer around it (pull loop, acks, in-progress heartbeats, cancels, registry) is the chat
worker's `handlers.RequestConsumer`; only the work per request differs: the inputs are checked
and tokenized, embedded by the engine in one batch, and the vectors published in the terminal
event. No deltas.

Invariants (as `service.RequestRunner`'s):
- exactly one terminal event per run, always last: `completed` with one vector per input in input
  order, `usage.prompt_tokens` = all inputs' tokens and `completion_tokens` 0; `failed` with
  `invalid_request` for input the model cannot read (a token id outside its vocabulary, an input
  longer than its context, a request of another kind), which no retry can fix; or `cancelled`;
- seq 0 is `started` (or the terminal event when the request never started).

Vectors travel as JSON numbers with the fewest digits that give back the engine's float32 value
exactly (9.6 MB for 2048 x 384 floats, against 17 MB for their float64 spelling), so a reader
that packs them into float32 again (`encoding_format: base64`) has the engine's very bits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from llmchat_common.contracts import (
    Cancelled,
    CancelReason,
    ChatRequested,
    Completed,
    Failed,
    Started,
    Timings,
    Usage,
)
from llmchat_worker import metrics
from llmchat_worker.errors import EngineFailure, RequestRejected
from llmchat_worker.service import EventSink, EventWriter, Terminal

Vector = npt.NDArray[np.float32]
# Room for the event's other fields next to the vectors, within the broker's message limit.
EVENT_OVERHEAD_BYTES = 64 * 1024


@runtime_checkable
class Embedder(Protocol):
    """An engine that makes embeddings (`embedding_engine.EmbeddingEngine`)."""

    max_model_len: int
    model_path: str
    vocab_size: int

    def tokenize(self, texts: list[str]) -> list[list[int]]: ...

    async def embed(
        self,
        key: str,
        inputs: list[list[int]],
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> list[Vector]: ...


def serves_embeddings(request: ChatRequested, engine: object) -> bool:
    """Whether `EmbeddingRunner` handles the request: every request of an embedding model's
    worker, and an embedding request that reached a chat model's (both refused with a clear
    message unless request and model match)."""
    return request.kind == "embedding" or isinstance(engine, Embedder)


def as_floats(vectors: list[Vector]) -> list[list[float]]:
    """Each float32 as the shortest decimal that reads back as the same float32."""
    return [[float(text) for text in vector.astype(np.float32).astype(str)] for vector in vectors]


class EmbeddingRunner(EventWriter):
    def __init__(
        self,
        request: ChatRequested,
        *,
        attempt: int,
        worker_id: str,
        engine: object,
        sink: EventSink,
        trace_headers: Mapping[str, str] | None = None,
        metrics_model: str | None = None,
        max_event_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(request, attempt=attempt, worker_id=worker_id, sink=sink, clock=clock)
        self.engine = engine
        self.trace_headers = trace_headers
        self.metrics_model = metrics_model or request.model
        self.max_event_bytes = max_event_bytes
        self.cancel_reason: CancelReason | None = None
        self._task: asyncio.Task[list[Vector]] | None = None
        self._prompt_tokens = 0
        self._started_at = 0.0

    @property
    def prompt_tokens(self) -> int:
        return self._prompt_tokens

    def cancel(self, reason: CancelReason) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def run(self) -> Terminal:
        self._started_at = self.clock()
        if self.cancel_reason is None and self._started_at >= self.request.deadline:
            self.cancel_reason = "deadline"
        if self.cancel_reason is not None:
            return await self._cancelled(self.cancel_reason)
        try:
            embedder = self._embedder()
            inputs = await self._inputs(embedder)
        except RequestRejected as exc:
            return await self._terminal(Failed(**self._base(), code=exc.code, message=exc.message))
        self._prompt_tokens = sum(len(ids) for ids in inputs)
        await self._emit(
            Started(
                **(self._base() | self.request.facts()),  # type: ignore[arg-type]
                queue_ms=max(0.0, (self._started_at - self.request.created_at) * 1000.0),
                prompt_tokens=self._prompt_tokens,
                engine_model=embedder.model_path,
            )
        )
        self._task = asyncio.create_task(
            embedder.embed(self.engine_key, inputs, self.request.priority, self.trace_headers)
        )
        try:
            vectors = await asyncio.wait_for(
                self._task, timeout=max(0.0, self.request.deadline - self.clock())
            )
        except TimeoutError:
            return await self._cancelled(self.cancel_reason or "deadline")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Our own task is being cancelled (shutdown): no terminal from here.
                metrics.ABORTS.labels(self.metrics_model, "shutdown").inc()
                raise
            return await self._cancelled(self.cancel_reason or "client")
        except RequestRejected as exc:
            return await self._terminal(
                Failed(**self._base(), code=exc.code, message=exc.message, timings=self._timings())
            )
        except EngineFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - one request's engine error must not kill the worker
            return await self._terminal(
                Failed(
                    **self._base(),
                    code="engine_error",
                    message=f"embedding failed: {type(exc).__name__}",
                    timings=self._timings(),
                )
            )
        if self.cancel_reason is not None:
            return await self._cancelled(self.cancel_reason)
        # In a thread: spelling out 2048 x 384 floats takes about a second.
        embeddings = await asyncio.to_thread(as_floats, vectors)
        completed = Completed(
            **self._base(),
            finish_reason="stop",
            text="",
            usage=Usage(prompt_tokens=self._prompt_tokens),
            timings=self._timings(),
            embeddings=embeddings,
        )
        if too_large := self._too_large(completed, len(vectors)):
            return await self._terminal(
                Failed(**self._base(), code="invalid_request", message=too_large, timings=self._timings())
            )
        return await self._terminal(completed)

    def _embedder(self) -> Embedder:
        request, engine = self.request, self.engine
        if request.kind != "embedding":
            raise RequestRejected(
                "invalid_request",
                f"the model {request.model!r} is an embedding model: use /v1/embeddings",
            )
        if not isinstance(engine, Embedder):
            raise RequestRejected("invalid_request", f"the model {request.model!r} is not an embedding model")
        return engine

    async def _inputs(self, embedder: Embedder) -> list[list[int]]:
        """The inputs as token ids, each checked against the model's vocabulary and context."""
        raw = self.request.inputs
        if not raw:
            raise RequestRejected("invalid_request", "the request has no input")
        texts = [item for item in raw if isinstance(item, str)]
        if texts and len(texts) != len(raw):
            raise RequestRejected("invalid_request", "the input mixes texts and token arrays")
        if texts:
            try:
                # In a thread: tokenizing a long batch must not stall the other requests.
                inputs = await asyncio.to_thread(embedder.tokenize, texts)
            except Exception as exc:
                raise RequestRejected("invalid_request", f"the input could not be tokenized: {exc}") from exc
        else:
            inputs = [list(item) for item in raw if not isinstance(item, str)]
        vocab, context = embedder.vocab_size, embedder.max_model_len
        for i, ids in enumerate(inputs):
            where = f"input {i}" if len(inputs) > 1 else "the input"
            if not ids:
                raise RequestRejected("invalid_request", f"{where} is empty")
            outside = next((t for t in ids if not 0 <= t < vocab), None)
            if outside is not None:
                raise RequestRejected(
                    "invalid_request",
                    f"{where}: token id {outside} is outside this model's vocabulary (ids 0 to {vocab - 1})",
                )
            if len(ids) > context:
                raise RequestRejected(
                    "invalid_request",
                    f"{where} has {len(ids)} tokens; this model reads at most {context} tokens per input",
                )
        return inputs

    def _too_large(self, event: Completed, count: int) -> str | None:
        """Why the event cannot be stored (more than the broker takes in one message), if so:
        the edge caps the inputs of a request so that this does not happen, but a broker with a
        smaller limit than the edge believes must still end the request with a clear error, not
        with a publish that fails on every delivery."""
        if self.max_event_bytes is None:
            return None
        size = len(event.model_dump_json()) + EVENT_OVERHEAD_BYTES
        if size <= self.max_event_bytes:
            return None
        return (
            f"the embeddings of {count} inputs take {size / 2**20:.1f} MiB, more than one event may "
            f"hold ({self.max_event_bytes / 2**20:.1f} MiB): send fewer inputs per request"
        )

    async def release(self, reason: str) -> None:
        """Hands the unfinished request back on purpose (shutdown): another worker runs it."""
        await self._released(reason)

    async def _cancelled(self, reason: CancelReason) -> Terminal:
        if self._task is not None:  # stopped in the engine, not while queued
            metrics.ABORTS.labels(self.metrics_model, reason).inc()
        return await self._terminal(
            Cancelled(
                **self._base(),
                reason=reason,
                usage=Usage(prompt_tokens=self._prompt_tokens),
                timings=self._timings(),
            )
        )

    def _timings(self) -> Timings:
        created = self.request.created_at
        return Timings(
            queue_ms=max(0.0, (self._started_at - created) * 1000.0),
            e2e_ms=(self.clock() - created) * 1000.0,
        )
