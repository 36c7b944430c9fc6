"""Every malformed request gets the right status and OpenAI's error JSON; nothing breaks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import IDLE_MODEL

TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": "{}"},
}
GOOD: dict[str, Any] = {
    "model": "tiny-random",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
}

CASES: list[tuple[str, bytes | dict[str, Any], int, str | None]] = [
    ("malformed json", b'{"model": "tiny-random", "messages": [', 400, None),
    ("not an object", b"[1, 2, 3]", 400, None),
    ("missing messages", {"model": "tiny-random"}, 400, "messages"),
    ("empty messages", {**GOOD, "messages": []}, 400, "messages"),
    ("unknown role", {**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ("missing content", {**GOOD, "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ("unknown model", {**GOOD, "model": "no-such-model"}, 404, "model"),
    ("missing model", {"messages": GOOD["messages"]}, 400, "model"),
    ("n above 8", {**GOOD, "n": 9}, 400, "n"),
    ("n with greedy sampling", {**GOOD, "n": 2, "temperature": 0}, 400, "n"),
    ("max_tokens beyond context", {**GOOD, "max_tokens": 100_000}, 400, "max_tokens"),
    ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
    ("temperature wrong type", {**GOOD, "temperature": "hot"}, 400, "temperature"),
    ("temperature out of range", {**GOOD, "temperature": 5}, 400, "temperature"),
    ("stream wrong type", {**GOOD, "stream": "yes please"}, 400, "stream"),
    ("messages wrong type", {**GOOD, "messages": "hello"}, 400, "messages"),
    ("too many stops", {**GOOD, "stop": [f"s{i}" for i in range(65)]}, 400, "stop"),
    ("empty stop", {**GOOD, "stop": ""}, 400, "stop"),
    ("seed beyond 64 bits", {**GOOD, "seed": 2**70}, 400, "seed"),
    # Tool calling and structured outputs (issue 14): each mistake named by its field.
    (
        "tool_choice names an unknown tool",
        {**GOOD, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        400,
        "tool_choice",
    ),
    ("tool_choice required without tools", {**GOOD, "tool_choice": "required"}, 400, "tool_choice"),
    (
        "tool parameters not a JSON Schema",
        {**GOOD, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]},
        400,
        "tools.0.function.parameters",
    ),
    (
        "tool name with spaces",
        {**GOOD, "tools": [{"type": "function", "function": {"name": "get weather"}}]},
        400,
        "tools.0.function.name",
    ),
    ("duplicate tool names", {**GOOD, "tools": [TOOL, TOOL]}, 400, "tools"),
    (
        "response schema not a JSON Schema",
        {
            **GOOD,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            },
        },
        400,
        "response_format.json_schema.schema",
    ),
    (
        "response schema too large",
        {
            **GOOD,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {
                        "type": "object",
                        "properties": {f"p{i}": {"type": "string"} for i in range(4000)},
                    },
                },
            },
        },
        400,
        "response_format.json_schema.schema",
    ),
    (
        "json_schema format without a schema",
        {**GOOD, "response_format": {"type": "json_schema"}},
        400,
        "response_format",
    ),
    ("unknown response format", {**GOOD, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    (
        "tool message answering no call",
        {
            **GOOD,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "x", "content": "1"},
            ],
        },
        400,
        "messages.1.tool_call_id",
    ),
    (
        "tool message without tool_call_id",
        {**GOOD, "messages": [{"role": "tool", "content": "1"}]},
        400,
        "messages.0.tool_call_id",
    ),
    (
        "tool_calls on a user message",
        {**GOOD, "messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}]},
        400,
        "messages.0.tool_calls",
    ),
    ("top_logprobs without logprobs", {**GOOD, "top_logprobs": 3}, 400, "top_logprobs"),
    ("top_logprobs above 20", {**GOOD, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("logit_bias key not a token id", {**GOOD, "logit_bias": {"hello": 1}}, 400, "logit_bias"),
    ("logit_bias out of range", {**GOOD, "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("legacy functions", {**GOOD, "functions": [{"name": "f"}]}, 400, "functions"),
    (
        "an image for a text model",
        {
            **GOOD,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                }
            ],
        },
        400,
        "messages.0.content",
    ),
    ("streamed and invalid", {**GOOD, "stream": True, "messages": []}, 400, "messages"),
    (
        "message too long",
        {**GOOD, "messages": [{"role": "user", "content": "x" * 600_000}]},
        400,
        "messages.0.content",
    ),
    ("too many messages", {**GOOD, "messages": [{"role": "user", "content": "x"}] * 513}, 400, "messages"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
async def test_bad_request_gets_openai_error(
    edge_url: str,
    auth_headers: dict[str, str],
    name: str,
    body: bytes | dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=30) as http:
        if isinstance(body, bytes):
            resp = await http.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
        else:
            resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param


async def test_prompt_beyond_context_is_400_from_the_worker(
    edge_url: str, auth_headers: dict[str, str]
) -> None:
    long_text = "the river and the mill " * 1200  # far more than 2048 tokens
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        resp = await http.post(
            "/v1/chat/completions", json={**GOOD, "messages": [{"role": "user", "content": long_text}]}
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


async def test_body_under_the_cap_but_over_a_megabyte_reaches_the_worker(
    edge_url: str, auth_headers: dict[str, str]
) -> None:
    """The broker's payload limit is above the edge's body cap: no 503 for a valid size."""
    part = "x " * 250_000  # under the per-message cap; together 1.5 MB
    roles = ("user", "assistant", "user")
    body = {**GOOD, "messages": [{"role": role, "content": part} for role in roles]}
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=120) as http:
        resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


async def test_ten_megabyte_body_is_413(edge_url: str, auth_headers: dict[str, str]) -> None:
    huge = {**GOOD, "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]}
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        resp = await http.post("/v1/chat/completions", json=huge)
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "request_too_large"

        # Chunked upload without Content-Length: counted while reading.
        async def chunks() -> Any:
            for _ in range(11):
                yield b"x" * (1024 * 1024)

        resp = await http.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert resp.status_code == 413


async def test_no_worker_for_model_ends_with_503_not_a_hang(
    edge_url: str, auth_headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        resp = await http.post("/v1/chat/completions", json={**GOOD, "model": IDLE_MODEL, "timeout": 2})
    assert resp.status_code in (503, 504)
    assert resp.json()["error"]["code"] == "no_worker"


async def test_unknown_route_is_openai_shaped_404(edge_url: str, auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=10) as http:
        resp = await http.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert "error" in resp.json()


async def test_still_serving_after_bad_input(edge_url: str, auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        resp = await http.post("/v1/chat/completions", json=GOOD)
    assert resp.status_code == 200
    assert resp.json()["usage"]["completion_tokens"] >= 1
