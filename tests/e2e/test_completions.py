"""Legacy `POST /v1/completions` through the whole platform: the OpenAI SDK's
`client.completions.create` against the edge (raw prompts, token ids, several prompts, streaming,
echo, logprobs, stop, n), usage counted once by the metrics projection and the request a job,
OpenAI-shaped 400s naming the field; and side by side with vLLM's own server on the same model,
the same answers at temperature 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI
from transformers import AutoTokenizer

from llmchat_common.launch.services import wait_for_worker
from llmchat_common.launch.stack import LocalStack
from tests.conftest import EMBEDDING_MODEL, MAIN_MODEL, Worker
from tests.helpers import eventually

pytestmark = pytest.mark.asyncio

PROMPT = "Once upon a time, in a small village by the river,"


@pytest.fixture
def client(edge_url: str, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(models_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(models_dir / MAIN_MODEL)


async def streamed(client: AsyncOpenAI, **kwargs: Any) -> tuple[dict[int, dict[str, Any]], Any]:
    """A stream's chunks folded per choice index: text, logprobs (lists joined), finish."""
    stream = await client.completions.create(
        model=MAIN_MODEL, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    async for chunk in stream:
        assert chunk.object == "text_completion" and chunk.id.startswith("cmpl-")
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            entry = choices.setdefault(c.index, {"text": "", "finish_reason": None, "logprobs": None})
            entry["text"] += c.text
            if c.finish_reason:
                entry["finish_reason"] = c.finish_reason
            if c.logprobs is not None:
                lp = entry["logprobs"] or {
                    "tokens": [],
                    "token_logprobs": [],
                    "top_logprobs": [],
                    "text_offset": [],
                }
                for key in lp:
                    lp[key] += getattr(c.logprobs, key) or []
                entry["logprobs"] = lp
    return choices, usage


async def test_string_prompt(client: AsyncOpenAI, tokenizer: Any) -> None:
    resp = await client.completions.create(model=MAIN_MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-") and resp.model == MAIN_MODEL
    [choice] = resp.choices
    assert choice.index == 0 and choice.text and choice.logprobs is None
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage is not None
    # No chat template: the prompt's tokens are the tokenizer's, special tokens included.
    assert resp.usage.prompt_tokens == len(tokenizer(PROMPT, add_special_tokens=True)["input_ids"])
    assert 1 <= resp.usage.completion_tokens <= 12
    assert (resp.usage.completion_tokens == 12) == (choice.finish_reason == "length")
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # OpenAI's default max_tokens for completions is 16.
    default = await client.completions.create(
        model=MAIN_MODEL, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True}
    )
    assert default.usage is not None and default.usage.completion_tokens == 16


async def test_token_id_prompt_is_the_same_prompt(client: AsyncOpenAI, tokenizer: Any) -> None:
    ids = tokenizer(PROMPT, add_special_tokens=True)["input_ids"]
    by_text = await client.completions.create(model=MAIN_MODEL, prompt=PROMPT, max_tokens=10, temperature=0)
    by_ids = await client.completions.create(model=MAIN_MODEL, prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids)


async def test_streaming_equals_whole_answer(client: AsyncOpenAI) -> None:
    whole = await client.completions.create(
        model=MAIN_MODEL, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=2
    )
    choices, usage = await streamed(client, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=2)
    assert list(choices) == [0]
    assert choices[0]["text"] == whole.choices[0].text
    assert choices[0]["finish_reason"] == whole.choices[0].finish_reason
    assert whole.choices[0].logprobs is not None
    assert choices[0]["logprobs"]["tokens"] == whole.choices[0].logprobs.tokens
    # Offsets run on across chunks as in the whole answer.
    assert choices[0]["logprobs"]["text_offset"] == whole.choices[0].logprobs.text_offset
    assert usage is not None and whole.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )


async def test_echo_starts_the_answer_with_the_prompt(client: AsyncOpenAI, tokenizer: Any) -> None:
    plain = await client.completions.create(model=MAIN_MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    echoed = await client.completions.create(
        model=MAIN_MODEL, prompt=PROMPT, max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage == plain.usage
    ids = tokenizer(PROMPT, add_special_tokens=True)["input_ids"]
    by_ids = await client.completions.create(
        model=MAIN_MODEL, prompt=ids, max_tokens=8, temperature=0, echo=True
    )
    assert by_ids.choices[0].text == tokenizer.decode(ids) + plain.choices[0].text
    choices, _ = await streamed(client, prompt=PROMPT, max_tokens=8, temperature=0, echo=True)
    assert choices[0]["text"] == echoed.choices[0].text
    # max_tokens 0: the prompt alone.
    only = await client.completions.create(model=MAIN_MODEL, prompt=PROMPT, max_tokens=0, echo=True)
    assert only.choices[0].text == PROMPT and only.usage is not None and only.usage.completion_tokens == 0


async def test_logprobs_one_per_token(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(
        model=MAIN_MODEL,
        prompt=PROMPT,
        max_tokens=10,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and resp.usage is not None
    n = resp.usage.completion_tokens
    assert len(lp.tokens or []) == len(lp.token_logprobs or []) == len(lp.top_logprobs or []) == n == 10
    assert all(isinstance(t, str) for t in lp.tokens or [])
    assert all(isinstance(v, float) and v <= 0 for v in lp.token_logprobs or [])
    for token, top in zip(lp.tokens or [], lp.top_logprobs or [], strict=True):
        # The sampled token's and the 3 most likely (greedy: the sampled one is the likeliest).
        assert isinstance(top, dict) and 1 <= len(top) <= 4 and token in top
        assert max(top.values()) == top[token]
    offsets = lp.text_offset or []
    assert offsets[0] == 0
    assert all(b - a == len(t) for a, b, t in zip(offsets, offsets[1:], lp.tokens or [], strict=False))


async def test_echo_with_logprobs_covers_the_prompt(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(
        model=MAIN_MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1, echo=True
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and resp.usage is not None
    assert len(lp.tokens or []) == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # Nothing precedes the first prompt token: it has no log probability.
    assert (lp.token_logprobs or [])[0] is None and (lp.top_logprobs or [])[0] is None
    assert all(isinstance(v, float) for v in (lp.token_logprobs or [])[1:])
    assert (lp.text_offset or [])[0] == 0
    assert resp.choices[0].text.startswith(PROMPT)
    choices, _ = await streamed(client, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1, echo=True)
    assert choices[0]["text"] == resp.choices[0].text
    assert choices[0]["logprobs"]["tokens"] == lp.tokens
    assert choices[0]["logprobs"]["text_offset"] == lp.text_offset


async def test_stop_ends_before_the_stop_string(client: AsyncOpenAI) -> None:
    whole = await client.completions.create(
        model=MAIN_MODEL, prompt=PROMPT, max_tokens=30, temperature=0, extra_body={"ignore_eos": True}
    )
    text = whole.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"no usable stop string in {text!r}"
    cut = await client.completions.create(
        model=MAIN_MODEL,
        prompt=PROMPT,
        max_tokens=30,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


async def test_n_choices_and_several_prompts(client: AsyncOpenAI) -> None:
    resp = await client.completions.create(model=MAIN_MODEL, prompt=PROMPT, max_tokens=6, n=2, seed=7)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage is not None and resp.usage.completion_tokens <= 12
    choices, usage = await streamed(client, prompt=PROMPT, max_tokens=6, n=2, seed=7)
    assert sorted(choices) == [0, 1] and all(c["finish_reason"] for c in choices.values())
    assert usage is not None and usage.prompt_tokens == resp.usage.prompt_tokens
    # Several prompts: a completion of each, index = prompt index * n + choice.
    prompts = ["The cat sat", "A long road"]
    singles = [
        await client.completions.create(model=MAIN_MODEL, prompt=p, max_tokens=6, temperature=0)
        for p in prompts
    ]
    many = await client.completions.create(model=MAIN_MODEL, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert [c.text for c in many.choices] == [s.choices[0].text for s in singles]
    assert many.usage is not None
    assert many.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)
    choices, usage = await streamed(client, prompt=prompts, max_tokens=6, temperature=0)
    assert [choices[i]["text"] for i in (0, 1)] == [c.text for c in many.choices]
    assert usage is not None and usage.completion_tokens == many.usage.completion_tokens
    sampled = await client.completions.create(model=MAIN_MODEL, prompt=prompts, max_tokens=4, n=2, seed=3)
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]


async def test_usage_counted_once_and_a_job(
    client: AsyncOpenAI, edge_url: str, auth_headers: dict[str, str], stack: LocalStack, metrics_service: Any
) -> None:
    resp = await client.completions.create(model=MAIN_MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    assert resp.usage is not None
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:

        async def rows() -> list[Any] | None:
            found = await conn.fetch(
                "SELECT kind, status, prompt_tokens, completion_tokens, conversation_id FROM usage.requests "
                "WHERE request_id = $1",
                resp.id,
            )
            return list(found) or None

        [row] = await eventually(rows, timeout=30, what="the usage row")
        assert dict(row) == {
            "kind": "completion",
            "status": "completed",
            "prompt_tokens": resp.usage.prompt_tokens,
            "completion_tokens": resp.usage.completion_tokens,
            "conversation_id": None,
        }
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=30) as http:
        job = (await http.get(f"/v1/jobs/{resp.id}")).json()
        assert job["status"] == "completed"
        assert job["result"]["object"] == "text_completion"
        assert job["result"]["choices"][0]["text"] == resp.choices[0].text

        async def listed() -> bool:
            page = (await http.get("/v1/jobs", params={"limit": 100})).json()
            return resp.id in [j["id"] for j in page["data"]]

        await eventually(listed, timeout=30, what="the job in the list")


GOOD: dict[str, Any] = {"model": MAIN_MODEL, "prompt": "hi", "max_tokens": 4}

BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("suffix", {**GOOD, "suffix": "end"}, 400, "suffix"),
    ("best_of above n", {**GOOD, "best_of": 3}, 400, "best_of"),
    ("n above 8", {**GOOD, "n": 9}, 400, "n"),
    ("n with greedy sampling", {**GOOD, "n": 2, "temperature": 0}, 400, "n"),
    ("logprobs above 5", {**GOOD, "logprobs": 6}, 400, "logprobs"),
    ("missing prompt", {"model": MAIN_MODEL}, 400, "prompt"),
    ("empty prompt array", {**GOOD, "prompt": []}, 400, "prompt"),
    ("mixed prompt array", {**GOOD, "prompt": ["a", 1]}, 400, "prompt"),
    ("negative token id", {**GOOD, "prompt": [1, -2]}, 400, "prompt"),
    ("token id outside the vocabulary", {**GOOD, "prompt": [1, 10_000_000]}, 400, "prompt"),
    ("max_tokens beyond context", {**GOOD, "max_tokens": 100_000}, 400, "max_tokens"),
    (
        "echo and logprobs without tokens",
        {**GOOD, "echo": True, "logprobs": 1, "max_tokens": 0},
        400,
        "max_tokens",
    ),
    ("unknown model", {**GOOD, "model": "no-such-model"}, 404, "model"),
    ("stop empty", {**GOOD, "stop": ""}, 400, "stop"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD, ids=[c[0] for c in BAD])
async def test_bad_input_is_named(
    name: str, body: dict[str, Any], status: int, param: str, edge_url: str, auth_headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        resp = await http.post("/v1/completions", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"]


async def test_an_embedding_model_is_refused(
    embedding_worker: Worker, edge_url: str, auth_headers: dict[str, str]
) -> None:
    wait_for_worker(embedding_worker.proc, embedding_worker.port, timeout=600)
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:

        async def seen() -> bool:
            models = (await http.get("/v1/models")).json()["data"]
            return any(m["id"] == EMBEDDING_MODEL and m["workers"] for m in models)

        await eventually(seen, timeout=30, what="the embedding model in the registry")
        resp = await http.post("/v1/completions", json={**GOOD, "model": EMBEDDING_MODEL})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "model" and "embedding model" in error["message"]


# -- side by side with vLLM's own server ---------------------------------------------------------

PARITY: dict[str, dict[str, Any]] = {
    "text": {"prompt": PROMPT, "max_tokens": 12},
    "token ids": {"prompt": [310, 265, 399, 318, 500, 12], "max_tokens": 12},
    "default max_tokens": {"prompt": PROMPT, "ignore_eos": True},
    "echo": {"prompt": PROMPT, "max_tokens": 6, "echo": True},
    "echo token ids": {"prompt": [310, 265, 399], "max_tokens": 6, "echo": True},
    "logprobs": {"prompt": PROMPT, "max_tokens": 8, "logprobs": 3},
    "logprobs 0": {"prompt": PROMPT, "max_tokens": 4, "logprobs": 0},
    "echo and logprobs": {"prompt": PROMPT, "max_tokens": 4, "logprobs": 2, "echo": True},
    "stops": {"prompt": PROMPT, "max_tokens": 40, "stop": ["zz0", "e"]},
    "several prompts": {"prompt": ["The cat sat", "A long road", "Numbers: one two"], "max_tokens": 6},
    "seeded n": {"prompt": PROMPT, "max_tokens": 6, "n": 3, "temperature": 0.9, "seed": 11},
    "several prompts, n": {
        "prompt": ["The cat", "A dog"],
        "max_tokens": 4,
        "n": 2,
        "temperature": 0.8,
        "seed": 5,
    },
    "penalties": {
        "prompt": PROMPT,
        "max_tokens": 12,
        "presence_penalty": 1.2,
        "frequency_penalty": 0.7,
        "repetition_penalty": 1.3,
        "top_k": 10,
        "logit_bias": {"20": 5, "21": -100},
    },
}


def _rounded(logprobs: dict[str, Any] | None) -> Any:
    if logprobs is None:
        return None
    return {
        "tokens": logprobs["tokens"],
        "token_logprobs": [None if v is None else round(v, 3) for v in logprobs["token_logprobs"]],
        "top_logprobs": [
            None if top is None else sorted((t, round(v, 3)) for t, v in top.items())
            for top in logprobs["top_logprobs"]
        ],
        "text_offset": logprobs["text_offset"],
    }


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    usage = body["usage"]
    return {
        "object": body.get("object"),
        "usage": (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
        "choices": [
            {
                "index": c["index"],
                "text": c["text"],
                "finish_reason": c["finish_reason"],
                "logprobs": _rounded(c.get("logprobs")),
            }
            for c in sorted(body["choices"], key=lambda c: c["index"])
        ],
    }


def accumulate(lines: list[str]) -> dict[str, Any]:
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    assert lines and lines[-1] == "[DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line)
        assert "error" not in chunk, chunk
        usage = chunk.get("usage") or usage
        for c in chunk["choices"]:
            entry = choices.setdefault(
                c["index"], {"index": c["index"], "text": "", "finish_reason": None, "logprobs": None}
            )
            entry["text"] += c["text"]
            entry["finish_reason"] = c.get("finish_reason") or entry["finish_reason"]
            if c.get("logprobs"):
                lp = entry["logprobs"] or {
                    "tokens": [],
                    "token_logprobs": [],
                    "top_logprobs": [],
                    "text_offset": [],
                }
                for key in lp:
                    lp[key] += c["logprobs"][key]
                entry["logprobs"] = lp
    assert usage is not None
    return {"object": "text_completion", "usage": usage, "choices": list(choices.values())}


async def ask(base: str, key: str, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=180
    ) as http:
        if not stream:
            resp = await http.post("/v1/completions", json=body)
            assert resp.status_code == 200, resp.text
            return dict(resp.json())
        lines: list[str] = []
        full = {**body, "stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", "/v1/completions", json=full) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line.removeprefix("data: "))
        return accumulate(lines)


@pytest.mark.parametrize(
    ("case", "stream"),
    [
        pytest.param(case, stream, id=f"{case}-{'streamed' if stream else 'whole'}")
        for case in PARITY
        for stream in (False, True)
    ],
)
async def test_same_answer_as_vllm_serve(
    case: str, stream: bool, vllm_serve: tuple[str, str], edge_url: str, api_key: str
) -> None:
    body = {"model": MAIN_MODEL, "temperature": 0, **PARITY[case]}
    theirs = normalise(await ask(*vllm_serve, body, stream=stream))
    ours = normalise(await ask(edge_url, api_key, body, stream=stream))
    assert ours == theirs
