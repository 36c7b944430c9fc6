"""The edge's HTTP hardening: CORS allowlist, security headers, caps before anything queues."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import Worker

ALLOWED = "https://chat.example.com"


@pytest.fixture(scope="module")
def cors_edge(stack: LocalStack, worker: Worker, auth_service: ManagedProcess) -> Iterator[str]:
    proc, port = start_edge(
        stack, extra_env={"LLMCHAT_CHAT_CORS_ORIGINS": f'["{ALLOWED}"]'}, name="chat-cors"
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


async def test_cors_allowlist(cors_edge: str, auth_headers: dict[str, str]) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with httpx.AsyncClient(base_url=cors_edge, timeout=30) as http:
        ok = await http.options("/v1/chat/completions", headers={"Origin": ALLOWED, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == ALLOWED
        assert "access-control-allow-credentials" not in ok.headers
        evil = await http.options(
            "/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight}
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers
        models = await http.get("/v1/models", headers={"Origin": "https://evil.example", **auth_headers})
        assert models.status_code == 200 and "access-control-allow-origin" not in models.headers
        models = await http.get("/v1/models", headers={"Origin": ALLOWED, **auth_headers})
        assert models.headers["access-control-allow-origin"] == ALLOWED
        # What a browser app needs to read to back off from a 429 (or pace itself before one).
        exposed = {h.strip().lower() for h in models.headers["access-control-expose-headers"].split(",")}
        assert exposed >= {"retry-after", "x-request-id"} | {
            f"x-ratelimit-{what}-{dimension}"
            for what in ("limit", "remaining", "reset")
            for dimension in ("requests", "tokens")
        }


async def test_security_headers_on_every_answer(edge_url: str, auth_headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:
        for resp in (
            await http.get("/v1/models", headers=auth_headers),
            await http.get("/v1/models"),  # a 401
            await http.get("/nowhere"),
        ):
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
            assert resp.headers["referrer-policy"] == "no-referrer"
        login = await http.post("/v1/auth/login", json={"email": "x@example.com", "password": "y"})
        assert login.status_code == 401 and login.headers["cache-control"] == "no-store"


def test_cors_wildcard_is_refused_at_start(stack: LocalStack) -> None:
    with pytest.raises(RuntimeError, match="exited"):
        start_edge(stack, extra_env={"LLMCHAT_CHAT_CORS_ORIGINS": '["*"]'}, name="chat-wildcard", timeout=30)
