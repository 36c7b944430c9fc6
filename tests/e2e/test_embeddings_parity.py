"""`/v1/embeddings` side by side with vLLM's own OpenAI server running the same embedding model
with the same engine arguments (the pooling runner): the same vectors (to float32 rounding),
the same token counts, for every input form."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmchat_common.launch.stack import LocalStack
from llmchat_common.testing.vllm_serve import start_vllm_serve
from llmchat_worker.embedding_engine import resolve_embedding_model_path
from llmchat_worker.profiles import load_profile, serve_args
from tests.conftest import EMBEDDING_MODEL
from tests.e2e.test_embeddings import HELLO_WORLD_IDS, UNRELATED

CASES: dict[str, dict[str, Any]] = {
    "a string": {"input": "hello world"},
    "strings": {"input": ["hello world", "hello there world", UNRELATED]},
    "token ids": {"input": HELLO_WORLD_IDS},
    "token-id arrays": {"input": [HELLO_WORLD_IDS, HELLO_WORLD_IDS[:3]]},
    "base64": {"input": ["hello world", "a second sentence"], "encoding_format": "base64"},
}


@pytest.fixture(scope="module")
def vllm_serve_embed(models_dir: Path, stack: LocalStack) -> Iterator[tuple[str, str]]:
    """vLLM's own server on the embedding model, with the worker's engine arguments (the pooling
    runner); for this module only."""
    profile = load_profile(EMBEDDING_MODEL)
    server = start_vllm_serve(
        serve_args(profile, resolve_embedding_model_path(profile, models_dir)),
        logs=stack.logs,
        name="vllm-serve-embed",
        kvcache_space_gib=profile.cpu_kvcache_space_gib,
        timeout=600,
    )
    try:
        yield server.url, server.api_key
    finally:
        server.stop()


def vectors(body: dict[str, Any]) -> list[list[float]]:
    out = []
    for item in sorted(body["data"], key=lambda d: d["index"]):
        value = item["embedding"]
        if isinstance(value, str):
            raw = base64.b64decode(value)
            value = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        out.append(value)
    return out


async def embed(base: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as http:
        resp = await http.post("/v1/embeddings", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_same_vectors_as_vllm_serve(
    case: str, embedding_model: str, vllm_serve_embed: tuple[str, str], edge_url: str, api_key: str
) -> None:
    body = {"model": embedding_model, **CASES[case]}
    theirs = await embed(*vllm_serve_embed, body)
    ours = await embed(edge_url, api_key, body)
    assert ours["object"] == theirs["object"] == "list"
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
    assert ours["usage"]["total_tokens"] == theirs["usage"]["total_tokens"]
    mine, reference = vectors(ours), vectors(theirs)
    assert [len(v) for v in mine] == [len(v) for v in reference]
    for a, b in zip(mine, reference, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
