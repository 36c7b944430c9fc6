"""`POST /v1/embeddings` through the whole platform: the OpenAI SDK (and LangChain's
OpenAIEmbeddings) against the edge, a worker of the built-in embedding model (all-MiniLM-L6-v2
on vLLM's pooling runner) behind the broker, usage counted once by the metrics projection,
nothing stored in history, and OpenAI-shaped 400s for what cannot be embedded."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError

from llmchat_common import subjects
from llmchat_common.contracts import Completed, Started
from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL
from tests.helpers import Account, connect_nats, eventually, read_request_events, register_account

pytestmark = pytest.mark.asyncio

DIMENSIONS = 384
# all-MiniLM-L6-v2's BERT vocabulary: [CLS] hello world [SEP].
HELLO_WORLD_IDS = [101, 7592, 2088, 102]
UNRELATED = "The invoice is due at the end of the month."


@pytest.fixture(scope="module")
def user(edge_url: str) -> Account:
    return register_account(edge_url)


def sdk(edge_url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=key, max_retries=0, timeout=120)


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


async def test_one_string_a_list_and_token_arrays(edge_url: str, embedding_model: str, user: Account) -> None:
    client = sdk(edge_url, user.api_key)
    one = await client.embeddings.create(model=embedding_model, input="hello world", encoding_format="float")
    assert one.object == "list" and one.model == embedding_model and len(one.data) == 1
    hello = one.data[0].embedding
    assert one.data[0].object == "embedding" and one.data[0].index == 0 and len(hello) == DIMENSIONS
    assert abs(math.sqrt(sum(x * x for x in hello)) - 1) < 1e-4  # the model normalises
    assert (one.usage.prompt_tokens, one.usage.total_tokens) == (4, 4)

    texts = ["hello world", "hello there world", UNRELATED]
    many = await client.embeddings.create(model=embedding_model, input=texts, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2] and many.usage.prompt_tokens == 4 + 5 + 15
    vectors = [d.embedding for d in many.data]
    assert close(vectors[0], hello)
    near, far = cos(vectors[0], vectors[1]), cos(vectors[0], vectors[2])
    print(f"\ncos(hello world, hello there world) = {near:.3f}; cos(hello world, {UNRELATED!r}) = {far:.3f}")
    assert near > 0.9 and far < 0.3 and near > far + 0.5

    # Token ids are embedded as they are: the same ids as the text's give the same vector.
    ids = await client.embeddings.create(
        model=embedding_model, input=[HELLO_WORLD_IDS, HELLO_WORLD_IDS[:3]], encoding_format="float"
    )
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 7
    assert close(ids.data[0].embedding, hello) and not close(ids.data[1].embedding, hello)
    flat = await client.embeddings.create(
        model=embedding_model, input=HELLO_WORLD_IDS, encoding_format="float"
    )
    assert len(flat.data) == 1 and close(flat.data[0].embedding, hello)

    # `user` is accepted and ignored.
    tagged = await client.embeddings.create(model=embedding_model, input="hello world", user="end-user-7")
    assert len(tagged.data[0].embedding) == DIMENSIONS


async def test_base64_is_the_same_float32_vector(edge_url: str, embedding_model: str, user: Account) -> None:
    client = sdk(edge_url, user.api_key)
    texts = ["hello world", "base64 please"]
    floats = await client.embeddings.create(model=embedding_model, input=texts, encoding_format="float")
    packed = await client.embeddings.create(model=embedding_model, input=texts, encoding_format="base64")
    for as_float, as_b64 in zip(floats.data, packed.data, strict=True):
        encoded = as_b64.embedding
        assert isinstance(encoded, str)
        raw = base64.b64decode(encoded)
        assert len(raw) == 4 * DIMENSIONS
        decoded = list(struct.unpack(f"<{DIMENSIONS}f", raw))
        assert close(decoded, as_float.embedding, 1e-5)
    # The SDK's default asks for base64 and decodes it itself.
    default = await client.embeddings.create(model=embedding_model, input=texts)
    assert close(default.data[0].embedding, floats.data[0].embedding, 1e-5)


async def test_usage_counted_once_nothing_in_history_and_the_log_holds_the_vectors(
    edge_url: str, embedding_model: str, stack: LocalStack
) -> None:
    user = register_account(edge_url)
    client = sdk(edge_url, user.api_key)
    raw = await client.embeddings.with_raw_response.create(
        model=embedding_model, input=["count me once", "and me"], encoding_format="float"
    )
    body = raw.parse()
    request_id = raw.headers["x-request-id"]
    prompt_tokens = body.usage.prompt_tokens
    assert prompt_tokens > 0

    # The log: started then completed, one vector per input, published once.
    events = await read_request_events(stack.env(), request_id)
    kinds = [type(e) for e in events]
    assert kinds == [Started, Completed], kinds
    completed = events[-1]
    assert isinstance(completed, Completed) and completed.kind == "embedding"
    assert completed.usage.prompt_tokens == prompt_tokens and completed.usage.completion_tokens == 0
    assert completed.embeddings is not None and len(completed.embeddings) == 2
    assert close(completed.embeddings[0], body.data[0].embedding, 0)
    nc = await connect_nats(stack.env())
    try:
        # Published with Nats-Msg-Id = request id: the same id again is a duplicate.
        ack = await nc.jetstream().publish(
            subjects.request_subject(embedding_model), b"{}", headers={"Nats-Msg-Id": request_id}
        )
        assert ack.duplicate
    finally:
        await nc.close()

    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:

        async def row() -> list[Any] | None:
            rows = await conn.fetch(
                "SELECT kind, status, prompt_tokens, completion_tokens, model FROM usage.requests "
                "WHERE request_id = $1",
                request_id,
            )
            return rows or None

        rows = await eventually(row, timeout=30, what="the usage row")
        assert len(rows) == 1
        assert dict(rows[0]) == {
            "kind": "embedding",
            "status": "completed",
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 0,
            "model": embedding_model,
        }
        daily = await conn.fetchrow(
            "SELECT requests, prompt_tokens, completion_tokens FROM usage.daily "
            "WHERE user_id = $1 AND model = $2",
            user.user_id,
            embedding_model,
        )
        assert daily is not None and tuple(daily) == (1, prompt_tokens, 0)
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:
        conversations = await http.get(
            "/v1/conversations", headers={"Authorization": f"Bearer {user.access_token}"}
        )
        assert conversations.status_code == 200 and conversations.json()["data"] == []


async def test_langchain_openai_embeddings(edge_url: str, embedding_model: str, user: Account) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=embedding_model,
        base_url=f"{edge_url}/v1",
        api_key=user.api_key,  # type: ignore[arg-type]
        # Texts as they are: its default tokenizes with tiktoken (OpenAI's vocabulary, fetched
        # from the internet), which is neither offline nor this model's.
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    documents = await embeddings.aembed_documents(["hello world", UNRELATED])
    query = await embeddings.aembed_query("hello there world")
    assert [len(v) for v in documents] == [DIMENSIONS, DIMENSIONS] and len(query) == DIMENSIONS
    assert cos(query, documents[0]) > 0.9 > cos(query, documents[1])


def expect_400(resp: httpx.Response, param: str, *, status: int = 400) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    if status == 400:
        assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "empty array"),
        ({"input": ["ok", ""]}, "input", "input[1] is an empty string"),
        ({"input": [[101, 102], []]}, "input", "empty token array"),
        ({"input": ["ok", [101]]}, "input", "mixes kinds"),
        ({"input": [101, -1]}, "input", "not negative"),
        ({"input": {"text": "hi"}}, "input", "must be a string"),
        ({}, "input", "required"),
        ({"input": ["x"] * 1355}, "input", "at most 1354 inputs"),
        # Known at the edge (the registry says the context): refused before it is queued.
        ({"input": [[101] * 300]}, "input", "at most 256 tokens"),
        # Found by the worker: the request ends `failed` with invalid_request.
        ({"input": [[101, 99999, 102]]}, "input", "token id 99999 is outside this model's vocabulary"),
        ({"input": "word " * 400}, "input", "at most 256 tokens"),
        ({"input": "hi", "dimensions": 128}, "dimensions", "does not support dimensions"),
        ({"input": "hi", "encoding_format": "hex"}, "encoding_format", ""),
    ],
)
async def test_bad_input_gets_an_openai_400(
    edge_url: str, embedding_model: str, user: Account, body: dict[str, Any], param: str, says: str
) -> None:
    async with httpx.AsyncClient(base_url=edge_url, timeout=60) as http:
        resp = await http.post(
            "/v1/embeddings",
            json={"model": embedding_model, **body},
            headers={"Authorization": f"Bearer {user.api_key}"},
        )
    error = expect_400(resp, param)
    assert says in error["message"], error


async def test_models_of_the_wrong_kind_and_unknown_ones(
    edge_url: str, embedding_model: str, user: Account
) -> None:
    headers = {"Authorization": f"Bearer {user.api_key}"}
    async with httpx.AsyncClient(base_url=edge_url, timeout=60) as http:
        chat_model = await http.post(
            "/v1/embeddings", json={"model": MAIN_MODEL, "input": "hi"}, headers=headers
        )
        assert "is a chat model" in expect_400(chat_model, "model")["message"]
        unknown = await http.post(
            "/v1/embeddings", json={"model": "no-such-model", "input": "hi"}, headers=headers
        )
        assert expect_400(unknown, "model", status=404)["code"] == "model_not_found"
        # The chat route refuses the embedding model (its registry entry says what it is).
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": embedding_model, "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        assert "embedding model" in expect_400(chat, "model")["message"]
        anonymous = await http.post("/v1/embeddings", json={"model": embedding_model, "input": "hi"})
        assert anonymous.status_code == 401
    # The SDK sees OpenAI's error.
    with pytest.raises(BadRequestError) as err:
        await sdk(edge_url, user.api_key).embeddings.create(model=embedding_model, input=[[101, 99999]])
    assert err.value.status_code == 400 and "vocabulary" in str(err.value)
