"""The benchmarks' fixed-rate token source: what it yields, and that it is never the default."""

from __future__ import annotations

import asyncio

from llmchat_common.contracts import ChatMessage, GenerationParams
from llmchat_worker.main import make_engine
from llmchat_worker.profiles import load_profile
from llmchat_worker.settings import WorkerSettings
from llmchat_worker.synthetic import SyntheticEngine, synthetic_text


def engine(rate: float = 1000.0) -> SyntheticEngine:
    return SyntheticEngine(load_profile("tiny-random"), rate)


async def test_counts_tokens_on_schedule_and_ends_with_length() -> None:
    source = engine(1000.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks = [chunk async for chunk in source.generate("r-1", [1, 2], GenerationParams(), 20)]
    elapsed = loop.time() - start
    assert "".join(c.text for c in chunks) == synthetic_text(20) == "".join(f"{i} " for i in range(20))
    assert [c.token_ids for c in chunks] == [[i] for i in range(20)]
    assert [c.finish_reason for c in chunks] == [None] * 19 + ["length"]
    # Token 19 is due 19 ms after the first (absolute schedule): never earlier.
    assert elapsed >= 0.019
    assert source.running() == 0


async def test_abort_and_running() -> None:
    source = engine(50.0)
    stream = source.generate("r-2", [1], GenerationParams(), 100)
    first = await anext(stream)
    assert first.text == "0 " and source.running() == 1
    await source.abort("r-2")
    await stream.aclose()
    assert source.running() == 0


def test_prompt_ids_are_stable_and_decode_matches_the_answer_text() -> None:
    source = engine()
    messages = [ChatMessage(role="user", content="tell me about the harbour")]
    assert source.encode_chat(messages) == source.encode_chat(messages)
    assert len(source.encode_chat(messages)) == 6
    assert source.decode([0, 1, 2]) == synthetic_text(3)
    assert source.stop_token_ids == () and not source.dead


def test_vllm_is_the_default_and_synthetic_only_when_asked() -> None:
    assert WorkerSettings().engine == "vllm"
    settings = WorkerSettings(engine="synthetic", synthetic_tokens_per_s=25)
    made = make_engine(settings, load_profile("tiny-random"))
    assert isinstance(made, SyntheticEngine) and made.interval == 0.04
    assert made.model_path == "synthetic:25-tokens-per-s"
