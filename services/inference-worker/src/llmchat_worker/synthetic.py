"""A token source at a fixed rate, for benchmarks of the pipeline only (never the default).

It stands in for the engine so that what is measured is the platform around it: the worker's
events, JetStream, the edge and the SSE stream. Token `i` of an answer has id `i` and text
`"i "`, so a reader can check that no token was lost, doubled or reordered; token `i` is due
at `start + i / rate` (an absolute schedule: a late token does not push the later ones back).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, Collection, Mapping

from llmchat_common.contracts import ChatMessage, FunctionTool, GenerationParams
from llmchat_worker.profiles import ModelProfile
from llmchat_worker.service import TokenChunk


def synthetic_text(count: int) -> str:
    """The whole text of an answer of `count` tokens."""
    return "".join(f"{i} " for i in range(count))


class SyntheticEngine:
    def __init__(self, profile: ModelProfile, tokens_per_s: float) -> None:
        self.profile = profile
        self.max_model_len = profile.max_model_len
        self.interval = 1.0 / tokens_per_s
        self.model_path = f"synthetic:{tokens_per_s:g}-tokens-per-s"
        self._running: set[str] = set()

    def start(self) -> None:
        """Nothing to load."""

    async def probe(self) -> None:
        async for _ in self.generate("llmchat-probe", [0], GenerationParams(), 1):
            pass

    def shutdown(self) -> None:
        self._running.clear()

    @property
    def stop_token_ids(self) -> Collection[int]:
        return ()

    @property
    def dead(self) -> bool:
        return False

    def running(self) -> int:
        return len(self._running)

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        # One id per word (and one per message for its role), the same for the same text.
        ids: list[int] = []
        for message in messages:
            ids.append(1)
            ids.extend(zlib.crc32(word.encode()) % 50_000 for word in message.content.split())
        return ids

    def encode_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            return [zlib.crc32(word.encode()) % 50_000 for word in prompt.split()] or [1], prompt
        return list(prompt), self.decode(list(prompt))

    def decode(self, ids: list[int]) -> str:
        return "".join(f"{i} " for i in ids)

    async def generate(
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
    ) -> AsyncGenerator[TokenChunk, None]:
        # No log probabilities here: the pipeline's cost is what is measured.
        loop = asyncio.get_running_loop()
        self._running.add(key)
        try:
            start = loop.time()
            for i in range(max_tokens):
                delay = start + i * self.interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield TokenChunk(
                    text=f"{i} ", token_ids=[i], finish_reason="length" if i == max_tokens - 1 else None
                )
        finally:
            self._running.discard(key)

    async def abort(self, key: str) -> None:
        self._running.discard(key)
