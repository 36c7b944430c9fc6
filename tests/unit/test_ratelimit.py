"""The limiter's in-memory rules (what runs while Redis is unreachable); the Redis path is
covered end to end in tests/e2e/test_limits.py."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from llmchat_chat.errors import RateLimited
from llmchat_chat.ratelimit import Limiter, Scope
from llmchat_chat.settings import Limits, LimitSettings
from llmchat_common.launch.process import free_port


@pytest.fixture
async def limiter() -> Limiter:
    # Nothing listens on this port: every call falls back to memory at once.
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    return Limiter(redis, LimitSettings())


def scope(limiter: Limiter, **limits: int) -> list[Scope]:
    limiter.settings.user.user = Limits(**limits)
    return limiter.scopes("u1", "user", None)


async def test_requests_per_minute(limiter: Limiter) -> None:
    scopes = scope(limiter, requests_per_minute=2, tokens_per_minute=1000, concurrent=10)
    hold = time.time() + 60
    first = await limiter.admit(scopes, "r1", 10, hold)
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await limiter.admit(scopes, "r2", 10, hold)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(scopes, "r3", 10, hold)
    assert refused.value.type == "requests"
    headers = refused.value.headers
    assert 1 <= int(headers["Retry-After"]) <= 60
    # OpenAI's headers on the refusal too: the budget as it stands (the refused one not counted).
    reset = f"{headers['Retry-After']}s"
    assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == reset
    assert {k: v for k, v in headers.items() if k.startswith("x-ratelimit-") and "reset" not in k} == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": str(1000 - 2 * 10),
    }


async def test_tokens_are_settled_to_real_usage(limiter: Limiter) -> None:
    scopes = scope(limiter, requests_per_minute=100, tokens_per_minute=100, concurrent=10)
    hold = time.time() + 60
    a = await limiter.admit(scopes, "a", 80, hold)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(scopes, "b", 30, hold)
    assert refused.value.type == "tokens"
    a.used_tokens = 20
    await limiter.release(a)
    b = await limiter.admit(scopes, "b", 30, hold)
    assert b.headers["x-ratelimit-remaining-tokens"] == str(100 - 20 - 30)


async def test_concurrency_slots_free_on_release_or_expiry(limiter: Limiter) -> None:
    scopes = scope(limiter, requests_per_minute=100, tokens_per_minute=10_000, concurrent=1)
    held = await limiter.admit(scopes, "a", 1, time.time() + 60)
    with pytest.raises(RateLimited):
        await limiter.admit(scopes, "b", 1, time.time() + 60)
    await limiter.release(held)
    await limiter.admit(scopes, "b", 1, time.time() - 1)  # its hold has already passed
    await limiter.admit(scopes, "c", 1, time.time() + 60)


async def test_an_api_keys_own_limit_and_its_users_both_apply(limiter: Limiter) -> None:
    """A request through a key counts against the key and its user: the key's lower limit trips
    first, for that key only; the user's limit covers all their keys and sessions together."""
    limiter.settings.user.user = Limits(requests_per_minute=3, tokens_per_minute=1000, concurrent=10)
    limiter.settings.api_key.user = Limits(requests_per_minute=1, tokens_per_minute=1000, concurrent=10)
    hold = time.time() + 60
    await limiter.admit(limiter.scopes("u1", "user", "k1"), "r1", 1, hold)
    with pytest.raises(RateLimited) as by_key:
        await limiter.admit(limiter.scopes("u1", "user", "k1"), "r2", 1, hold)
    assert "for this API key" in by_key.value.message
    assert by_key.value.headers["x-ratelimit-limit-requests"] == "1"
    await limiter.admit(limiter.scopes("u1", "user", "k2"), "r3", 1, hold)  # another key of u1
    await limiter.admit(limiter.scopes("u1", "user", None), "r4", 1, hold)  # u1 with a JWT
    with pytest.raises(RateLimited) as by_user:
        await limiter.admit(limiter.scopes("u1", "user", "k3"), "r5", 1, hold)
    assert "for this account" in by_user.value.message
    assert by_user.value.headers["x-ratelimit-limit-requests"] == "3"
    await limiter.admit(limiter.scopes("u2", "user", "k4"), "r6", 1, hold)  # other users unaffected


async def test_limits_follow_the_role(limiter: Limiter) -> None:
    settings = limiter.settings
    settings.user.user = Limits(requests_per_minute=1, tokens_per_minute=1000, concurrent=10)
    settings.user.admin = Limits(requests_per_minute=3, tokens_per_minute=1000, concurrent=10)
    settings.api_key.user = Limits(requests_per_minute=5, tokens_per_minute=1000, concurrent=10)
    settings.api_key.admin = Limits(requests_per_minute=2, tokens_per_minute=1000, concurrent=10)
    hold = time.time() + 60
    await limiter.admit(limiter.scopes("plain", "user", None), "p1", 1, hold)
    with pytest.raises(RateLimited):
        await limiter.admit(limiter.scopes("plain", "user", None), "p2", 1, hold)
    # An admin's user budget is the admin one: admitted where a user is refused, up to 3.
    for i in range(3):
        admitted = await limiter.admit(limiter.scopes("boss", "admin", None), f"a{i}", 1, hold)
        assert admitted.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(RateLimited) as refused:
        await limiter.admit(limiter.scopes("boss", "admin", None), "a3", 1, hold)
    assert "for this account" in refused.value.message
    # And an admin's key gets the admin key budget (2, below the user-role key's 5).
    for i in range(2):
        await limiter.admit(limiter.scopes("boss2", "admin", "kb"), f"b{i}", 1, hold)
    with pytest.raises(RateLimited) as by_key:
        await limiter.admit(limiter.scopes("boss2", "admin", "kb"), "b2", 1, hold)
    assert "for this API key" in by_key.value.message
    assert by_key.value.headers["x-ratelimit-limit-requests"] == "2"


async def test_throttle(limiter: Limiter) -> None:
    for _ in range(3):
        await limiter.throttle("login:x", 3, 300, "login attempts")
    with pytest.raises(RateLimited) as refused:
        await limiter.throttle("login:x", 3, 300, "login attempts")
    assert int(refused.value.headers["Retry-After"]) <= 300
