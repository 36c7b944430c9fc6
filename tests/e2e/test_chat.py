"""The OpenAI SDK against the edge: streaming and not, equal to vLLM called directly."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from llmchat_common.contracts import Completed, Delta, Started
from llmchat_common.launch.stack import LocalStack
from tests.e2e.conftest import CASES, Reference
from tests.helpers import read_request_events


@pytest.fixture
def client(edge_url: str, api_key: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{edge_url}/v1",
        api_key=api_key,
        max_retries=0,
        timeout=120,
    )


async def stream_text(client: AsyncOpenAI, **kwargs: Any) -> tuple[str, Any, str | None, str]:
    stream = await client.chat.completions.create(
        model="tiny-random", stream=True, stream_options={"include_usage": True}, **kwargs
    )
    parts: list[str] = []
    usage = None
    finish = None
    request_id = ""
    async for chunk in stream:
        request_id = chunk.id
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return "".join(parts), usage, finish, request_id


async def test_non_streaming_matches_direct_engine(client: AsyncOpenAI, reference: Reference) -> None:
    expected = reference.result()
    for case, ref in zip(CASES, expected, strict=True):
        resp = await client.chat.completions.create(
            model="tiny-random", messages=case["messages"], max_tokens=case["max_tokens"], temperature=0
        )
        assert resp.object == "chat.completion"
        assert resp.id.startswith("chatcmpl-")
        assert resp.choices[0].message.role == "assistant"
        assert resp.choices[0].message.content == ref["text"]
        assert resp.choices[0].finish_reason == ref["finish_reason"]
        assert resp.usage is not None
        assert resp.usage.prompt_tokens == ref["prompt_tokens"]
        assert resp.usage.completion_tokens == ref["completion_tokens"]
        assert resp.usage.total_tokens == ref["prompt_tokens"] + ref["completion_tokens"]


async def test_streaming_matches_direct_engine(client: AsyncOpenAI, reference: Reference) -> None:
    expected = reference.result()
    for case, ref in zip(CASES, expected, strict=True):
        text, usage, finish, _ = await stream_text(
            client, messages=case["messages"], max_tokens=case["max_tokens"], temperature=0
        )
        assert text == ref["text"]
        assert finish == ref["finish_reason"]
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (
            ref["prompt_tokens"],
            ref["completion_tokens"],
        )


async def test_request_id_header_and_body(edge_url: str, auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == resp.json()["id"]


async def test_sixteen_concurrent_streams(client: AsyncOpenAI) -> None:
    max_tokens = 64
    prompts = [f"Tell me about the number {i} and the river." for i in range(16)]
    results = await asyncio.gather(
        *(
            stream_text(
                client,
                messages=[{"role": "user", "content": p}],
                max_tokens=max_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            for p in prompts
        )
    )
    ids = {r[3] for r in results}
    assert len(ids) == 16
    for prompt, (text, usage, finish, _) in zip(prompts, results, strict=True):
        assert finish == "length"
        assert usage.completion_tokens == max_tokens
        assert text
        # Same prompt alone gives the same text: tokens pass unaltered and in order.
        single = await client.chat.completions.create(
            model="tiny-random",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert single.choices[0].message.content == text
        assert single.usage is not None and single.usage.prompt_tokens == usage.prompt_tokens


async def test_events_on_own_subject_in_order_with_one_terminal(
    client: AsyncOpenAI, stack: LocalStack
) -> None:
    runs = await asyncio.gather(
        *(
            stream_text(
                client,
                messages=[{"role": "user", "content": f"story {i}"}],
                max_tokens=50,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            for i in range(4)
        )
    )
    for text, usage, _, request_id in runs:
        events = await read_request_events(stack.env(), request_id)
        assert {e.request_id for e in events} == {request_id}  # type: ignore[attr-defined]
        assert isinstance(events[0], Started)
        assert [e.seq for e in events] == list(range(len(events)))  # type: ignore[attr-defined]
        terminals = [e for e in events if e.type in ("completed", "failed", "cancelled")]  # type: ignore[attr-defined]
        assert len(terminals) == 1 and terminals[0] is events[-1]
        assert isinstance(terminals[0], Completed)
        deltas = [e for e in events if isinstance(e, Delta)]
        assert "".join(d.text for d in deltas) == text == terminals[0].text
        assert sum(len(d.token_ids) for d in deltas) == usage.completion_tokens == 50
        assert terminals[0].timings.ttft_ms is not None and terminals[0].timings.e2e_ms > 0
