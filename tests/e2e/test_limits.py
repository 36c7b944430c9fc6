"""Per-user and per-key limits with real Redis, on an edge of their own with small limits; and
what happens while Redis is down (limits kept in the edge's memory) and after it returns."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from llmchat_common.contracts import Cancelled, Completed
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import IDLE_MODEL, MAIN_MODEL, Worker
from tests.helpers import Account, eventually, left_too_late, read_request_events, register_account

RPM, TPM, CONCURRENT = 5, 2000, 2
LIMITS = {
    f"LLMCHAT_CHAT_LIMITS__{scope}__USER__{name}": str(value)
    for scope in ("USER", "API_KEY")
    for name, value in (("REQUESTS_PER_MINUTE", RPM), ("TOKENS_PER_MINUTE", TPM), ("CONCURRENT", CONCURRENT))
} | {"LLMCHAT_CHAT_LIMITS__LOGIN_PER_ACCOUNT": "4", "LLMCHAT_CHAT_LIMITS__REDIS_RETRY_S": "0.5"}


def chat(max_tokens: int = 2, **extra: object) -> dict[str, object]:
    return {
        "model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        **extra,
    }


@pytest.fixture(scope="module")
def limited_edge(stack: LocalStack, worker: Worker, auth_service: ManagedProcess) -> Iterator[str]:
    proc, port = start_edge(stack, models=[MAIN_MODEL, IDLE_MODEL], extra_env=LIMITS, name="chat-limited")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
async def user(limited_edge: str) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    account = register_account(limited_edge)
    headers = {"Authorization": f"Bearer {account.api_key}"}
    async with httpx.AsyncClient(base_url=limited_edge, headers=headers, timeout=120) as http:
        yield http, account


async def fresh_window() -> None:
    """Limits count per clock minute: start a test early in one so it cannot straddle two."""
    into = time.time() % 60
    if into > 40:
        await asyncio.sleep(60.5 - into)


def assert_429(resp: httpx.Response) -> None:
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"


def assert_limit_429(resp: httpx.Response, which: str) -> dict[str, int]:
    """A chat completion refused by a limit: Retry-After plus OpenAI's x-ratelimit-* headers of
    the refusing scope. Returns the remaining requests and tokens they state."""
    assert_429(resp)
    assert resp.json()["error"]["type"] == which
    headers = resp.headers
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-limit-tokens"] == str(TPM)
    for dimension in ("requests", "tokens"):
        reset = headers[f"x-ratelimit-reset-{dimension}"]
        assert reset.endswith("s") and 1 <= int(reset[:-1]) <= 60, reset
    remaining = {
        "requests": int(headers["x-ratelimit-remaining-requests"]),
        "tokens": int(headers["x-ratelimit-remaining-tokens"]),
    }
    assert 0 <= remaining["requests"] <= RPM and 0 <= remaining["tokens"] <= TPM
    if which == "concurrent":
        assert headers["retry-after"] == "1"  # a slot frees when a request ends
    else:
        assert headers["retry-after"] == headers[f"x-ratelimit-reset-{which}"][:-1]
    return remaining


async def test_requests_per_minute(user: tuple[httpx.AsyncClient, Account]) -> None:
    http, _ = user
    await fresh_window()
    remaining = []
    for _ in range(RPM):
        resp = await http.post("/v1/chat/completions", json=chat())
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-ratelimit-limit-requests"] == str(RPM)
        remaining.append(int(resp.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(RPM - 1, -1, -1))
    refused = await http.post("/v1/chat/completions", json=chat())
    assert int(refused.headers["retry-after"]) <= 60
    assert assert_limit_429(refused, "requests")["requests"] == 0


async def test_tokens_per_minute_count_real_usage(user: tuple[httpx.AsyncClient, Account]) -> None:
    http, _ = user
    await fresh_window()
    # A reservation larger than the whole budget can never run; nothing is spent yet.
    too_big = await http.post("/v1/chat/completions", json=chat(max_tokens=TPM))
    assert assert_limit_429(too_big, "tokens") == {"requests": RPM, "tokens": TPM}
    body = chat(max_tokens=400, ignore_eos=True)
    first = await http.post("/v1/chat/completions", json=body)
    second = await http.post("/v1/chat/completions", json=body)
    assert first.status_code == second.status_code == 200, second.text
    # Each answer reserved an estimate; the budget is charged the real usage: after the first
    # answer settled, the second saw exactly that much less left.
    first_left = int(first.headers["x-ratelimit-remaining-tokens"])
    second_left = int(second.headers["x-ratelimit-remaining-tokens"])
    assert first_left - second_left == first.json()["usage"]["total_tokens"]
    used = first.json()["usage"]["total_tokens"] + second.json()["usage"]["total_tokens"]
    # Spend the rest with fixed-length answers until refused: the refusal comes when the real
    # usage plus the next reservation passes the budget.
    spent = used
    while True:
        resp = await http.post("/v1/chat/completions", json=chat(max_tokens=500, ignore_eos=True))
        if resp.status_code == 429:
            break
        assert resp.status_code == 200, resp.text
        spent += resp.json()["usage"]["total_tokens"]
        assert spent <= TPM + 50  # the prompt estimate may be a few tokens short
    # The refusal states what the real usage left, which is less than the next reservation.
    assert assert_limit_429(resp, "tokens")["tokens"] == max(0, TPM - spent)
    assert spent + 500 > TPM


async def test_concurrent_requests(stack: LocalStack, user: tuple[httpx.AsyncClient, Account]) -> None:
    """A slot is held while a request is queued or running, and freed when its client leaves.
    The held requests wait for a model no worker serves, so they cannot finish on their own."""
    http, account = user
    await fresh_window()
    queued = chat(model=IDLE_MODEL, stream=True, timeout=120)
    holders = [asyncio.create_task(http.post("/v1/chat/completions", json=queued)) for _ in range(CONCURRENT)]
    client = aioredis.from_url(stack.env()["LLMCHAT_REDIS_URL"])

    async def slots_taken() -> bool:
        return int(await client.zcard(f"rl:user:{account.user_id}:conc")) == CONCURRENT

    try:
        await eventually(slots_taken, timeout=10, what="the held requests to take their slots")
        resp = await http.post("/v1/chat/completions", json=chat())
        # The held requests were counted; the refused one was not.
        assert assert_limit_429(resp, "concurrent")["requests"] == RPM - CONCURRENT
    finally:
        holders[0].cancel()  # that client leaves: its slot frees
        await client.aclose()

    async def admitted() -> bool:
        return (await http.post("/v1/chat/completions", json=chat())).status_code == 200

    await eventually(admitted, timeout=10, what="a freed slot")
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)


async def test_login_throttle_and_equal_answers(limited_edge: str) -> None:
    account = register_account(limited_edge)
    async with httpx.AsyncClient(base_url=limited_edge, timeout=30) as http:
        wrong = await http.post(
            "/v1/auth/login", json={"email": account.email, "password": "wrong-password-123"}
        )
        unknown = await http.post(
            "/v1/auth/login", json={"email": "nobody-x@example.com", "password": "whatever-123"}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        for _ in range(3):
            await http.post("/v1/auth/login", json={"email": account.email, "password": "wrong-password-123"})
        # The account's budget (4 per window) is spent: even the right password waits now.
        throttled = await http.post(
            "/v1/auth/login", json={"email": account.email, "password": account.password}
        )
        assert_429(throttled)


def loopback_addresses() -> tuple[str, str]:
    """Two loopback addresses of the caller's own (not 127.0.0.1): the edge sees them as the
    client address, so their per-address counters (shared in Redis by every edge of the run)
    are this test's."""
    a, b = secrets.token_bytes(2)
    return f"127.{a}.{b}.2", f"127.{a}.{b}.3"


async def test_login_throttle_per_client_address(
    stack: LocalStack, user: tuple[httpx.AsyncClient, Account]
) -> None:
    """Per address, whatever the account: after its budget, an address is refused even the right
    password of an account with budget left, while another address still logs in. On an edge of
    its own with a small budget (the limited edge's would apply to 127.0.0.1, where the rest of
    the run logs in)."""
    _, account = user  # registered through the limited edge
    proc, port = start_edge(
        stack, extra_env={"LLMCHAT_CHAT_LIMITS__LOGIN_PER_ADDRESS": "3"}, name="chat-addr"
    )
    url = f"http://127.0.0.1:{port}"
    here, elsewhere = loopback_addresses()

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        return httpx.AsyncClient(base_url=url, transport=transport, timeout=30)

    right = {"email": account.email, "password": account.password}
    try:
        async with client(here) as http:
            for i in range(3):  # three different accounts: no per-account budget is spent
                wrong = {
                    "email": f"nobody-{i}-{secrets.token_hex(4)}@example.com",
                    "password": "whatever-123",
                }
                assert (await http.post("/v1/auth/login", json=wrong)).status_code == 401
            throttled = await http.post("/v1/auth/login", json=right)
            assert_429(throttled)
            assert "login attempts" in throttled.json()["error"]["message"]
            assert 1 <= int(throttled.headers["retry-after"]) <= 300
            assert not [h for h in throttled.headers if h.startswith("x-ratelimit-")]
        async with client(elsewhere) as http:
            assert (await http.post("/v1/auth/login", json=right)).status_code == 200
    finally:
        proc.stop()


async def test_redis_down_limits_from_memory_then_recovery(
    stack: LocalStack, limited_edge: str, user: tuple[httpx.AsyncClient, Account]
) -> None:
    http, _ = user
    await fresh_window()
    redis_proc = next(p for p in stack.processes if p.name == "redis")
    redis_proc.stop()
    try:
        # Documented choice: the edge keeps serving and enforces the same limits per process.
        for _ in range(RPM):
            resp = await http.post("/v1/chat/completions", json=chat())
            assert resp.status_code == 200, resp.text
        refused = await http.post("/v1/chat/completions", json=chat())
        assert assert_limit_429(refused, "requests")["requests"] == 0
    finally:
        stack.processes.remove(redis_proc)
        stack.start_redis(port=stack.ports.redis)  # same port: the edges' URL stays valid

    await back_on_redis(stack, limited_edge, http)


async def back_on_redis(stack: LocalStack, limited_edge: str, http: httpx.AsyncClient) -> None:
    """A new user's requests are counted in Redis again."""
    other = register_account(limited_edge)
    client = aioredis.from_url(stack.env()["LLMCHAT_REDIS_URL"])
    try:

        async def counted_in_redis() -> bool:
            resp = await http.post(
                "/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {other.api_key}"}
            )
            assert resp.status_code in (200, 429), resp.text
            window = int(time.time() // 60)
            return bool(await client.get(f"rl:user:{other.user_id}:req:{window}"))

        await eventually(counted_in_redis, timeout=10, what="limits back in Redis")
    finally:
        await client.aclose()


async def test_a_hung_redis_does_not_stall_requests(
    stack: LocalStack, limited_edge: str, user: tuple[httpx.AsyncClient, Account]
) -> None:
    """Redis stalled (SIGSTOP), not gone: every call to it gives up within its timeout, the
    limits fall back to memory, and requests go on without waiting for it."""
    http, _ = user
    await fresh_window()
    redis_proc = stack.process("redis")
    redis_proc.pause()
    try:
        for _ in range(RPM):
            began = time.monotonic()
            resp = await http.post("/v1/chat/completions", json=chat())
            assert resp.status_code == 200, resp.text
            assert time.monotonic() - began < 3.0
        refused = await http.post("/v1/chat/completions", json=chat())
        assert assert_limit_429(refused, "requests")["requests"] == 0
    finally:
        redis_proc.resume()
    await back_on_redis(stack, limited_edge, http)


async def test_client_leaving_mid_stream_is_charged_what_was_generated(
    stack: LocalStack, user: tuple[httpx.AsyncClient, Account]
) -> None:
    http, account = user
    client = aioredis.from_url(stack.env()["LLMCHAT_REDIS_URL"])
    try:
        for attempt in range(3):
            if attempt:
                # A void try charged its whole answer: the next one starts in a minute of its own.
                await asyncio.sleep(60.5 - time.time() % 60)
            await fresh_window()
            window = int(time.time() // 60)
            key = f"rl:user:{account.user_id}:tok:{window}"
            before = int(await client.get(key) or 0)
            first = await http.post("/v1/chat/completions", json=chat())
            assert first.status_code == 200
            long = chat(max_tokens=1500, ignore_eos=True, stream=True)
            chunks = 0
            async with http.stream("POST", "/v1/chat/completions", json=long) as resp:
                assert resp.status_code == 200
                request_id = resp.headers["x-request-id"]
                async for line in resp.aiter_lines():
                    chunks += '"content"' in line
                    if chunks >= 3:
                        break
            left_at = time.time()
            # Leaving the block closed the connection: the edge cancels, and the worker's
            # `cancelled` event says what was generated; that, not the 1,500-token reservation,
            # is charged.
            events = await read_request_events(stack.env(), request_id)
            ended = events[-1]
            if isinstance(ended, Completed) and left_too_late(ended.ts, left_at):
                continue  # the test client stalled past the whole answer (tests/helpers.py)
            assert isinstance(ended, Cancelled) and 0 < ended.usage.completion_tokens < 1500
            expected = before + first.json()["usage"]["total_tokens"] + ended.usage.total_tokens

            async def charged() -> bool:
                value = await client.get(key)  # noqa: B023 - awaited within this iteration
                return value is not None and int(value) == expected  # noqa: B023

            await eventually(charged, timeout=10, what="the partial usage to be charged")
            return
        pytest.fail("the test client never left before the answer ended (3 tries): too slow to test")
    finally:
        await client.aclose()
