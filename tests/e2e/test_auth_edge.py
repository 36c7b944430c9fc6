"""Authentication at the edge against the real auth service, Postgres, Redis and NATS: the
session flow, the JWT attack matrix, key rotation, API keys and admin actions."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llmchat_common import subjects
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import rpc_ping, start_auth
from llmchat_common.launch.stack import LocalStack
from tests.conftest import paused
from tests.helpers import (
    CANARY_PASSWORD,
    Account,
    make_admin,
    read_request_events,
    register_account,
    service_cli,
)

CHAT = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ISSUER, AUDIENCE = "llmchat-auth", "llmchat-api"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http(edge_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge_url, timeout=60) as client:
        yield client


async def chat_status(http: httpx.AsyncClient, token: str) -> int:
    return (await http.post("/v1/chat/completions", json=CHAT, headers=bearer(token))).status_code


def assert_401(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"].startswith("Bearer")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def auth_cli(stack: LocalStack, *args: str, env: dict[str, str] | None = None) -> str:
    out = service_cli(stack, "auth", *args, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


async def db(stack: LocalStack) -> asyncpg.Connection:
    return await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])


async def active_signing_key(stack: LocalStack) -> tuple[str, Ed25519PrivateKey]:
    conn = await db(stack)
    try:
        row = await conn.fetchrow(
            "SELECT kid, private_key_pem FROM auth.signing_keys"
            " WHERE retired_at IS NULL AND removed_at IS NULL ORDER BY created_at DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    key = serialization.load_pem_private_key(row["private_key_pem"].encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return row["kid"], key


def claims_for(user_id: str, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "role": "user",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_session_flow_register_login_refresh_logout(
    http: httpx.AsyncClient, edge_url: str, stack: LocalStack
) -> None:
    account = register_account(edge_url)
    assert await chat_status(http, account.access_token) == 200
    # The request and every event of it carry the caller (and the key, when one was used).
    by_key = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(account.api_key))
    events = await read_request_events(stack.env(), by_key.json()["id"])
    assert events and all(getattr(e, "user_id", None) == account.user_id for e in events)
    assert all(getattr(e, "api_key_id", None) for e in events)
    me = await http.get("/v1/auth/me", headers=bearer(account.access_token))
    assert me.status_code == 200 and me.json()["email"] == account.email and me.json()["role"] == "user"
    assert "password" not in me.text

    refreshed = await http.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 200, refreshed.text
    pair = refreshed.json()
    assert pair["refresh_token"] != account.refresh_token
    assert await chat_status(http, pair["access_token"]) == 200

    out = await http.post(
        "/v1/auth/logout", json={"refresh_token": pair["refresh_token"]}, headers=bearer(pair["access_token"])
    )
    assert out.status_code == 204
    assert_401(await http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}))
    # The logged-out access token is denylisted until it expires.
    assert_401(await http.post("/v1/chat/completions", json=CHAT, headers=bearer(pair["access_token"])))


async def test_closed_registration_is_refused_clearly(
    http: httpx.AsyncClient, stack: LocalStack, auth_service: ManagedProcess, account: Account
) -> None:
    """Open registration off: registering answers 403 `registration_closed` with a message that
    says so, and makes no account; existing accounts still log in. The session's auth service is
    paused meanwhile, so the closed one alone answers (replicas share the queue group)."""
    email = f"closed-{uuid.uuid4().hex[:10]}@example.com"
    with paused(auth_service, lambda: rpc_ping(stack, subjects.auth_subject("ping"))):
        closed = start_auth(stack, extra_env={"LLMCHAT_AUTH_OPEN_REGISTRATION": "false"}, name="auth-closed")
        try:
            refused = await http.post("/v1/auth/register", json={"email": email, "password": CANARY_PASSWORD})
            login = await http.post(
                "/v1/auth/login", json={"email": account.email, "password": account.password}
            )
        finally:
            closed.stop()
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "registration_closed", error
    assert "registration is closed" in error["message"]
    assert login.status_code == 200, login.text
    conn = await db(stack)
    try:
        assert await conn.fetchval("SELECT count(*) FROM auth.users WHERE email = $1", email) == 0
    finally:
        await conn.close()


async def test_reused_refresh_token_revokes_the_family(http: httpx.AsyncClient, edge_url: str) -> None:
    account = register_account(edge_url)
    first = await http.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200
    assert_401(await http.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token}))
    # The thief's reuse also killed the legitimate holder's newer token.
    assert_401(await http.post("/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]}))


async def test_missing_or_malformed_credentials_are_401(http: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        bearer("not-a-token"),
        bearer("sk-llmchat-nope"),
    ):
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/auth/me")):
            resp = await http.request(method, path, json=CHAT if method == "POST" else None, headers=headers)
            assert_401(resp)


async def test_jwt_attack_matrix(http: httpx.AsyncClient, edge_url: str, stack: LocalStack) -> None:
    account = register_account(edge_url)
    kid, key = await active_signing_key(stack)
    good = jwt.encode(
        claims_for(account.user_id), key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}
    )
    assert await chat_status(http, good) == 200  # the forger's baseline is a valid token

    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "none", "typ": "at+jwt", "kid": kid}
    alg_none = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_for(account.user_id)).encode())}."
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
    hs_payload = b64(json.dumps(claims_for(account.user_id, role="admin")).encode())
    import hmac

    hs_sig = b64(hmac.new(public_pem, f"{hs_header}.{hs_payload}".encode(), hashlib.sha256).digest())
    hs256 = f"{hs_header}.{hs_payload}.{hs_sig}"

    def signed(claims: dict[str, Any], *, with_kid: str = kid, typ: str = "at+jwt", signer: Any = key) -> str:
        return jwt.encode(claims, signer, algorithm="EdDSA", headers={"kid": with_kid, "typ": typ})

    head, payload, sig = good.split(".")
    tampered_claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered_claims["role"] = "admin"
    tampered = f"{head}.{b64(json.dumps(tampered_claims).encode())}.{sig}"

    attacks = {
        "alg none": alg_none,
        "HS256 with the public key": hs256,
        "wrong aud": signed(claims_for(account.user_id, aud="someone-else")),
        "wrong iss": signed(claims_for(account.user_id, iss="https://evil.example")),
        "expired": signed(
            claims_for(account.user_id, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
        ),
        "missing exp": signed(claims_for(account.user_id, exp=None)),
        "longer-lived than issued": signed(claims_for(account.user_id, exp=int(time.time()) + 30 * 86400)),
        "missing jti": signed(claims_for(account.user_id, jti=None)),
        "unknown kid": signed(
            claims_for(account.user_id), with_kid="no-such-kid", signer=Ed25519PrivateKey.generate()
        ),
        "foreign key, known kid": signed(claims_for(account.user_id), signer=Ed25519PrivateKey.generate()),
        "wrong typ": signed(claims_for(account.user_id), typ="JWT"),
        "bad role": signed(claims_for(account.user_id, role="root")),
        "tampered payload": tampered,
        "truncated": good[:-10],
        "garbage segments": "a.b.c",
    }
    for name, token in attacks.items():
        resp = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(token))
        assert resp.status_code == 401, (name, resp.status_code, resp.text)
        assert_401(resp)
        admin = await http.get("/v1/admin/users", headers=bearer(token))
        assert admin.status_code == 401, (name, admin.text)


async def test_disabled_user_is_locked_out_at_once(
    http: httpx.AsyncClient, edge_url: str, stack: LocalStack
) -> None:
    admin = make_admin(stack, edge_url)
    user = register_account(edge_url)
    refreshed = (await http.post("/v1/auth/refresh", json={"refresh_token": user.refresh_token})).json()
    assert await chat_status(http, refreshed["access_token"]) == 200
    assert await chat_status(http, user.api_key) == 200

    resp = await http.patch(
        f"/v1/admin/users/{user.user_id}", json={"disabled": True}, headers=bearer(admin.access_token)
    )
    assert resp.status_code == 200 and resp.json()["disabled"] is True
    assert_401(await http.post("/v1/chat/completions", json=CHAT, headers=bearer(refreshed["access_token"])))
    assert_401(await http.post("/v1/chat/completions", json=CHAT, headers=bearer(user.api_key)))
    refresh = await http.post("/v1/auth/refresh", json={"refresh_token": refreshed["refresh_token"]})
    assert refresh.status_code in (401, 403), refresh.text
    login = await http.post("/v1/auth/login", json={"email": user.email, "password": user.password})
    assert login.status_code in (401, 403)

    resp = await http.patch(
        f"/v1/admin/users/{user.user_id}", json={"disabled": False}, headers=bearer(admin.access_token)
    )
    assert resp.status_code == 200 and resp.json()["disabled"] is False
    assert await chat_status(http, user.api_key) == 200
    login = await http.post("/v1/auth/login", json={"email": user.email, "password": user.password})
    assert login.status_code == 200


async def test_admin_routes_are_for_admins(
    http: httpx.AsyncClient, edge_url: str, stack: LocalStack, account: Account
) -> None:
    resp = await http.get("/v1/admin/users", headers=bearer(account.access_token))
    assert resp.status_code == 403 and resp.json()["error"]["type"] == "permission_error"
    resp = await http.get("/v1/admin/users", headers=bearer(account.api_key))
    assert resp.status_code == 403
    admin = make_admin(stack, edge_url)
    users = await http.get("/v1/admin/users", headers=bearer(admin.access_token))
    assert users.status_code == 200
    assert any(u["id"] == account.user_id for u in users.json()["users"])
    assert all("password" not in json.dumps(u) for u in users.json()["users"])
    missing = await http.patch(
        f"/v1/admin/users/{uuid.uuid4()}", json={"disabled": True}, headers=bearer(admin.access_token)
    )
    assert missing.status_code == 404
    garbage = await http.patch(
        "/v1/admin/users/not-a-uuid", json={"disabled": True}, headers=bearer(admin.access_token)
    )
    assert garbage.status_code == 404


async def test_key_rotation(http: httpx.AsyncClient, edge_url: str, stack: LocalStack) -> None:
    old = register_account(edge_url)
    old_kid = jwt.get_unverified_header(old.access_token)["kid"]
    auth_cli(stack, "rotate-keys")
    # The auth service caches its signing key for a moment: the next logins switch shortly.
    deadline = time.monotonic() + 10
    while True:
        new = register_account(edge_url)
        new_kid = jwt.get_unverified_header(new.access_token)["kid"]
        if new_kid != old_kid:
            break
        assert time.monotonic() < deadline, "logins still signed with the retired key"
    assert await chat_status(http, new.access_token) == 200
    assert await chat_status(http, old.access_token) == 200  # the retired key still verifies
    jwks = (await http.get("/.well-known/jwks.json")).json()
    assert {old_kid, new_kid} <= {k["kid"] for k in jwks["keys"]}
    assert all("d" not in k for k in jwks["keys"])  # public halves only

    auth_cli(stack, "remove-key", f"--kid={old_kid}")  # a kid may begin with "-"
    deadline = time.monotonic() + 5
    while await chat_status(http, old.access_token) != 401:
        assert time.monotonic() < deadline, "a removed key's token still works"
    assert await chat_status(http, new.access_token) == 200


async def test_api_keys_prefix_only_revocable_and_never_stored_in_clear(
    http: httpx.AsyncClient, edge_url: str, stack: LocalStack
) -> None:
    account = register_account(edge_url)
    assert await chat_status(http, account.api_key) == 200
    listed = (await http.get("/v1/auth/api-keys", headers=bearer(account.access_token))).json()["keys"]
    assert len(listed) == 1
    entry = listed[0]
    assert "key" not in entry and account.api_key not in json.dumps(listed)
    assert account.api_key.startswith(entry["prefix"]) and len(entry["prefix"]) < len(account.api_key) - 20
    assert entry["last_used_at"] is not None

    # Keys are managed from a login session, not with a key.
    assert_401(await http.post("/v1/auth/api-keys", json={"name": "x"}, headers=bearer(account.api_key)))

    resp = await http.delete(f"/v1/auth/api-keys/{entry['id']}", headers=bearer(account.access_token))
    assert resp.status_code == 204
    assert_401(await http.post("/v1/chat/completions", json=CHAT, headers=bearer(account.api_key)))
    # Another user's key id answers 404, like a missing one.
    other = register_account(edge_url)
    resp = await http.delete(f"/v1/auth/api-keys/{entry['id']}", headers=bearer(other.access_token))
    assert resp.status_code == 404

    conn = await db(stack)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'auth'")
        dump = []
        for row in tables:
            dump += [str(r[0]) for r in await conn.fetch(f'SELECT t::text FROM auth."{row["tablename"]}" t')]
    finally:
        await conn.close()
    text = "\n".join(dump)
    assert account.email in text  # the dump is real
    for secret in (
        CANARY_PASSWORD,
        account.api_key,
        account.refresh_token,
        account.api_key.removeprefix("sk-llmchat-"),
    ):
        assert secret not in text


async def test_forged_api_key_cache_entry_is_ignored(
    http: httpx.AsyncClient, edge_url: str, stack: LocalStack
) -> None:
    """Whoever can write to Redis cannot mint a principal: the cache entries are authenticated."""
    account = register_account(edge_url)
    digest = hashlib.sha256(account.api_key.encode()).hexdigest()
    forged = json.dumps({"user_id": account.user_id, "role": "admin", "api_key_id": "forged"})
    client = aioredis.from_url(stack.env()["LLMCHAT_REDIS_URL"])
    try:
        for value in (forged, "0" * 64 + "." + forged):
            await client.set(f"apikey:{digest}", value, ex=60)
            resp = await http.get("/v1/admin/users", headers=bearer(account.api_key))
            assert resp.status_code == 403, resp.text  # the real principal: a user
    finally:
        await client.aclose()
