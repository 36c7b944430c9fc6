"""Revocations reach every edge: a logout, a disabled user and a revoked API key done through the
session's edge (A) stop working on a second edge (B) within the documented time. B learns of
them only through auth's revocations KV bucket: A's own in-memory denylist is not shared, and B
verifies JWTs locally. The README promises "at once" on the edge that acted and "within
milliseconds" on the others (API keys at most 10 s, the Redis cache's TTL, should an edge miss
the KV entry); B must refuse well inside that, and much sooner than the 10 s cache TTL, which
would otherwise hide a broken watch for API keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from llmchat_common.auth_contracts import api_key_hash
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.e2e.test_auth_edge import assert_401, bearer
from tests.helpers import make_admin, register_account

# "Within milliseconds": a KV update travels in a few; the bound leaves room for a loaded
# two-core machine and is still far below the 10 s an API key's cache entry lives.
PROPAGATION_S = 2.0
# Any authenticated route that asks nothing of auth: only the edge's own check decides.
PROBE = "/v1/models"


@pytest.fixture(scope="module")
def edge_b(stack: LocalStack, edge_url: str, auth_service: ManagedProcess) -> Iterator[str]:
    proc, port = start_edge(stack, name="chat-edge-b")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
async def a(edge_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge_url, timeout=60) as client:
        yield client


@pytest.fixture
async def b(edge_b: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge_b, timeout=60) as client:
        yield client


async def probe(http: httpx.AsyncClient, credential: str) -> httpx.Response:
    return await http.get(PROBE, headers=bearer(credential))


async def refused_within(
    http: httpx.AsyncClient, credential: str, seconds: float, what: str
) -> httpx.Response:
    """Polls until the edge refuses `credential`; fails if it is still accepted after `seconds`."""
    started = time.monotonic()
    while True:
        resp = await probe(http, credential)
        if resp.status_code != 200:
            assert_401(resp)
            return resp
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"{what}: still accepted by the second edge after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def accepted_within(http: httpx.AsyncClient, credential: str, seconds: float, what: str) -> None:
    started = time.monotonic()
    while (resp := await probe(http, credential)).status_code != 200:
        assert resp.status_code == 401, resp.text
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"{what}: still refused by the second edge after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


async def test_logout_reaches_the_other_edge(
    edge_url: str, a: httpx.AsyncClient, b: httpx.AsyncClient
) -> None:
    account = register_account(edge_url)
    assert (await probe(b, account.access_token)).status_code == 200
    out = await a.post(
        "/v1/auth/logout", json={"refresh_token": account.refresh_token}, headers=bearer(account.access_token)
    )
    assert out.status_code == 204, out.text
    assert_401(await probe(a, account.access_token))  # at once where it was done
    resp = await refused_within(b, account.access_token, PROPAGATION_S, "a logged-out access token")
    assert resp.json()["error"]["code"] == "token_revoked", resp.text


async def test_disabling_a_user_reaches_the_other_edge(
    edge_url: str, stack: LocalStack, a: httpx.AsyncClient, b: httpx.AsyncClient
) -> None:
    admin = make_admin(stack, edge_url)
    user = register_account(edge_url)
    assert (await probe(b, user.access_token)).status_code == 200
    assert (await probe(b, user.api_key)).status_code == 200  # now in B's key cache

    resp = await a.patch(
        f"/v1/admin/users/{user.user_id}", json={"disabled": True}, headers=bearer(admin.access_token)
    )
    assert resp.status_code == 200 and resp.json()["disabled"] is True, resp.text
    assert_401(await probe(a, user.access_token))
    assert_401(await probe(a, user.api_key))
    resp = await refused_within(b, user.access_token, PROPAGATION_S, "a disabled user's access token")
    assert resp.json()["error"]["code"] == "account_disabled", resp.text
    # The same entry stops the key, though B cached it seconds ago.
    resp = await probe(b, user.api_key)
    assert_401(resp)
    assert resp.json()["error"]["code"] == "account_disabled", resp.text

    # Re-enabling reaches B the same way (the KV entry's deletion).
    resp = await a.patch(
        f"/v1/admin/users/{user.user_id}", json={"disabled": False}, headers=bearer(admin.access_token)
    )
    assert resp.status_code == 200 and resp.json()["disabled"] is False, resp.text
    await accepted_within(b, user.access_token, PROPAGATION_S, "a re-enabled user's access token")


async def test_revoked_api_key_reaches_the_other_edge(
    edge_url: str, stack: LocalStack, a: httpx.AsyncClient, b: httpx.AsyncClient
) -> None:
    account = register_account(edge_url)
    assert (await probe(b, account.api_key)).status_code == 200
    redis = aioredis.from_url(stack.env()["LLMCHAT_REDIS_URL"])
    try:
        cache_key = f"apikey:{api_key_hash(account.api_key)}"
        cached = await redis.get(cache_key)
        assert cached, "the second edge did not cache the key"

        keys = (await a.get("/v1/auth/api-keys", headers=bearer(account.access_token))).json()["keys"]
        assert len(keys) == 1
        resp = await a.delete(f"/v1/auth/api-keys/{keys[0]['id']}", headers=bearer(account.access_token))
        assert resp.status_code == 204, resp.text
        assert_401(await probe(a, account.api_key))
        # Edge A dropped the shared cache entry; put B's back, as when B's check raced the
        # revocation and wrote it afterwards. Without the KV watch, B would now serve the key
        # from that entry for up to 10 s.
        await redis.set(cache_key, cached, ex=10)
        await refused_within(b, account.api_key, PROPAGATION_S, "a revoked API key")
        assert await redis.exists(cache_key), "the cache entry expired: the check proved nothing"
    finally:
        await redis.aclose()
