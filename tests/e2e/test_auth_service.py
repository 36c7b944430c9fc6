"""The auth service as a real process over real NATS request-reply, Postgres and JetStream KV.

Each test uses its own accounts (unique emails); key rotation tests tolerate other keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from llmchat_common import subjects
from llmchat_common.auth_contracts import (
    API_KEY_PREFIX,
    ApiKeyCreated,
    ApiKeyList,
    Jwks,
    Principal,
    TokenPair,
    UserList,
    UserView,
    api_key_hash,
    revocation_key,
)
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_auth
from llmchat_common.launch.stack import LocalStack
from llmchat_common.rpc import RpcReply
from llmchat_common.settings import TokenSettings
from tests.helpers import eventually

PASSWORD = "correct horse battery staple"
pytestmark = pytest.mark.usefixtures("auth_service")


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture(scope="session")
async def nc(stack: LocalStack, auth_service: ManagedProcess) -> AsyncIterator[Client]:
    """A connection with the edge's credentials (the only caller auth's subjects allow)."""
    env = stack.env("chat")
    client = await nats.connect(
        env["LLMCHAT_NATS_URL"], user=env.get("LLMCHAT_NATS_USER"), password=env.get("LLMCHAT_NATS_PASSWORD")
    )
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def revocations(nc: Client) -> KeyValue:
    return await nc.jetstream().key_value(subjects.REVOCATIONS_BUCKET)


async def call_raw(nc: Client, op: str, payload: bytes) -> bytes:
    msg = await nc.request(subjects.auth_subject(op), payload, timeout=10)
    return bytes(msg.data)


async def call(nc: Client, op: str, body: dict[str, Any] | None = None) -> RpcReply:
    return RpcReply.model_validate_json(await call_raw(nc, op, json.dumps(body or {}).encode()))


async def ok(nc: Client, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await call(nc, op, body)
    assert reply.ok, f"{op}: {reply.error}"
    assert reply.result is not None
    return reply.result


async def fails(nc: Client, op: str, body: dict[str, Any] | None, code: str) -> RpcReply:
    reply = await call(nc, op, body)
    assert not reply.ok and reply.error is not None, f"{op} should fail with {code}"
    assert reply.error.code == code, f"{op}: {reply.error}"
    return reply


async def new_user(nc: Client, tag: str = "user") -> tuple[UserView, str]:
    email = unique_email(tag)
    user = UserView.model_validate(await ok(nc, "register", {"email": email, "password": PASSWORD}))
    return user, email


async def login(nc: Client, email: str, password: str = PASSWORD) -> TokenPair:
    return TokenPair.model_validate(await ok(nc, "login", {"email": email, "password": password}))


async def in_kv(kv: KeyValue, key: str) -> bool:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return False
    return entry.value is not None


async def jwks(nc: Client) -> dict[str, dict[str, Any]]:
    return {k["kid"]: k for k in Jwks.model_validate(await ok(nc, "jwks")).keys}


def verify(token: str, keys: dict[str, dict[str, Any]]) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    settings = TokenSettings()
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(keys[header["kid"]]),
        algorithms=["EdDSA"],
        audience=settings.audience,
        issuer=settings.issuer,
    )
    return claims


def cli(stack: LocalStack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmchat_auth", *args],
        env={**os.environ, **stack.env("auth"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


# -- accounts and sessions ----------------------------------------------------------------------
async def test_ping(nc: Client) -> None:
    assert (await call(nc, "ping")).ok


async def test_register_login_refresh_rotation_reuse_and_logout(nc: Client, revocations: KeyValue) -> None:
    user, email = await new_user(nc)
    assert user.role == "user" and not user.disabled and user.email == email

    first = await login(nc, email)
    assert first.token_type == "bearer" and first.expires_in == TokenSettings().access_ttl_s
    me = UserView.model_validate(await ok(nc, "me", {"user_id": user.id}))
    assert me.last_login_at is not None

    second = TokenPair.model_validate(await ok(nc, "refresh", {"refresh_token": first.refresh_token}))
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token

    # Reusing the rotated token: refused, and the family dies (the newest token too).
    await fails(nc, "refresh", {"refresh_token": first.refresh_token}, "invalid_token")
    await fails(nc, "refresh", {"refresh_token": second.refresh_token}, "invalid_token")

    # A fresh login is a new family; logout revokes it and denylists the access token.
    third = await login(nc, email)
    claims = jwt.decode(third.access_token, options={"verify_signature": False})
    await ok(
        nc,
        "logout",
        {
            "user_id": user.id,
            "refresh_token": third.refresh_token,
            "access_jti": claims["jti"],
            "access_exp": claims["exp"],
        },
    )
    await fails(nc, "refresh", {"refresh_token": third.refresh_token}, "invalid_token")
    assert await in_kv(revocations, revocation_key("jti", claims["jti"]))


async def test_logout_leaves_another_users_refresh_token_alone(nc: Client) -> None:
    alice, _ = await new_user(nc, "alice")
    _, bob_email = await new_user(nc, "bob")
    bob_tokens = await login(nc, bob_email)
    await ok(nc, "logout", {"user_id": alice.id, "refresh_token": bob_tokens.refresh_token})
    await ok(nc, "refresh", {"refresh_token": bob_tokens.refresh_token})


async def test_concurrent_refresh_with_one_token_lets_exactly_one_through(nc: Client) -> None:
    _, email = await new_user(nc)
    tokens = await login(nc, email)
    body = {"refresh_token": tokens.refresh_token}
    replies = await asyncio.gather(*(call(nc, "refresh", body) for _ in range(2)))
    assert sum(r.ok for r in replies) == 1
    loser = next(r for r in replies if not r.ok)
    assert loser.error is not None and loser.error.code == "invalid_token"


async def test_unknown_email_and_wrong_password_answer_identically(nc: Client) -> None:
    _, email = await new_user(nc)
    wrong = await call_raw(
        nc, "login", json.dumps({"email": email, "password": "not the password!"}).encode()
    )
    unknown = await call_raw(
        nc, "login", json.dumps({"email": unique_email("nobody"), "password": "not the password!"}).encode()
    )
    malformed = await call_raw(nc, "login", json.dumps({"email": "no-at-sign", "password": "x"}).encode())
    assert wrong == unknown == malformed
    reply = RpcReply.model_validate_json(wrong)
    assert reply.error is not None and reply.error.code == "invalid_credentials"


async def test_emails_are_normalised_and_unique_case_insensitively(nc: Client) -> None:
    email = unique_email("Mixed")
    user = UserView.model_validate(
        await ok(nc, "register", {"email": f"  {email.upper()} ", "password": PASSWORD})
    )
    assert user.email == email.lower()
    await fails(nc, "register", {"email": email.lower(), "password": PASSWORD}, "email_taken")
    await login(nc, email.upper())


async def test_register_refuses_bad_input_without_echoing_it(nc: Client) -> None:
    await fails(nc, "register", {"email": unique_email(), "password": "short"}, "weak_password")
    await fails(nc, "register", {"email": unique_email(), "password": "a" * 20}, "weak_password")
    await fails(nc, "register", {"email": "not an email", "password": PASSWORD}, "invalid_request")
    await fails(nc, "register", {"email": "x@localhost", "password": PASSWORD}, "invalid_request")
    secret = "S3cret-" + "x" * 1100
    reply = await fails(nc, "register", {"email": unique_email(), "password": secret}, "invalid_request")
    assert reply.error is not None and "S3cret" not in reply.error.message
    for payload in (b"{not json", b"[]", b'"text"', b"", b'{"email": 5}'):
        raw = RpcReply.model_validate_json(await call_raw(nc, "register", payload))
        assert raw.error is not None and raw.error.code == "invalid_request", payload


async def test_disabled_account_is_told_only_after_a_correct_password(nc: Client) -> None:
    user, email = await new_user(nc)
    await ok(nc, "set_user_disabled", {"user_id": user.id, "disabled": True})
    await fails(nc, "login", {"email": email, "password": "not the password!"}, "invalid_credentials")
    await fails(nc, "login", {"email": email, "password": PASSWORD}, "account_disabled")
    await ok(nc, "set_user_disabled", {"user_id": user.id, "disabled": False})


async def test_change_password_ends_other_sessions(nc: Client) -> None:
    user, email = await new_user(nc)
    old_session = await login(nc, email)
    new_password = "a brand new passphrase 42"
    await fails(
        nc,
        "change_password",
        {"user_id": user.id, "current_password": "wrong password 123", "new_password": new_password},
        "invalid_credentials",
    )
    await fails(
        nc,
        "change_password",
        {"user_id": user.id, "current_password": PASSWORD, "new_password": "tiny"},
        "weak_password",
    )
    fresh = TokenPair.model_validate(
        await ok(
            nc,
            "change_password",
            {"user_id": user.id, "current_password": PASSWORD, "new_password": new_password},
        )
    )
    await fails(nc, "refresh", {"refresh_token": old_session.refresh_token}, "invalid_token")
    await ok(nc, "refresh", {"refresh_token": fresh.refresh_token})
    await fails(nc, "login", {"email": email, "password": PASSWORD}, "invalid_credentials")
    await login(nc, email, new_password)


async def test_unknown_and_malformed_ids_are_not_found(nc: Client) -> None:
    await fails(nc, "me", {"user_id": "not-a-uuid"}, "not_found")
    await fails(nc, "me", {"user_id": str(uuid.uuid4())}, "not_found")
    await fails(nc, "set_user_disabled", {"user_id": str(uuid.uuid4()), "disabled": True}, "not_found")


# -- API keys ---------------------------------------------------------------------------------
async def test_api_key_lifecycle(nc: Client, revocations: KeyValue) -> None:
    user, _ = await new_user(nc)
    other, _ = await new_user(nc, "other")
    created = ApiKeyCreated.model_validate(await ok(nc, "create_api_key", {"user_id": user.id, "name": "ci"}))
    assert created.key.startswith(API_KEY_PREFIX) and len(created.key) >= len(API_KEY_PREFIX) + 43
    assert created.prefix == created.key[: len(API_KEY_PREFIX) + 8]
    second = ApiKeyCreated.model_validate(await ok(nc, "create_api_key", {"user_id": user.id}))

    listed = await ok(nc, "list_api_keys", {"user_id": user.id})
    keys = ApiKeyList.model_validate(listed).keys
    assert [k.id for k in keys] == [second.id, created.id]  # newest first
    for entry in listed["keys"]:
        assert set(entry) == {"id", "name", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert ApiKeyList.model_validate(await ok(nc, "list_api_keys", {"user_id": other.id})).keys == []

    digest = api_key_hash(created.key)
    principal = Principal.model_validate(await ok(nc, "verify_api_key", {"key_hash": digest}))
    assert principal == Principal(user_id=user.id, role="user", api_key_id=created.id)
    used = ApiKeyList.model_validate(await ok(nc, "list_api_keys", {"user_id": user.id})).keys
    assert next(k for k in used if k.id == created.id).last_used_at is not None

    # Only the owner can revoke; anyone else (or a made-up id) gets not_found.
    await fails(nc, "revoke_api_key", {"user_id": other.id, "key_id": created.id}, "not_found")
    await fails(nc, "revoke_api_key", {"user_id": user.id, "key_id": str(uuid.uuid4())}, "not_found")
    await ok(nc, "verify_api_key", {"key_hash": digest})
    await ok(nc, "revoke_api_key", {"user_id": user.id, "key_id": created.id})
    await fails(nc, "verify_api_key", {"key_hash": digest}, "invalid_token")
    assert await in_kv(revocations, revocation_key("key", digest))
    after = ApiKeyList.model_validate(await ok(nc, "list_api_keys", {"user_id": user.id})).keys
    assert next(k for k in after if k.id == created.id).revoked_at is not None
    await ok(nc, "verify_api_key", {"key_hash": api_key_hash(second.key)})
    await fails(nc, "verify_api_key", {"key_hash": "0" * 64}, "invalid_token")


async def test_disabling_a_user_stops_refresh_and_api_keys(nc: Client, revocations: KeyValue) -> None:
    user, email = await new_user(nc)
    tokens = await login(nc, email)
    key = ApiKeyCreated.model_validate(await ok(nc, "create_api_key", {"user_id": user.id}))
    digest = api_key_hash(key.key)

    disabled = UserView.model_validate(
        await ok(nc, "set_user_disabled", {"user_id": user.id, "disabled": True})
    )
    assert disabled.disabled
    reply = await call(nc, "refresh", {"refresh_token": tokens.refresh_token})
    assert reply.error is not None and reply.error.code in ("account_disabled", "invalid_token")
    await fails(nc, "verify_api_key", {"key_hash": digest}, "invalid_token")
    await fails(nc, "create_api_key", {"user_id": user.id}, "account_disabled")
    assert await in_kv(revocations, revocation_key("user", user.id))
    listed = UserList.model_validate(await ok(nc, "list_users", {"limit": 1000}))
    assert any(u.id == user.id and u.disabled for u in listed.users)
    assert listed.total >= len(listed.users)

    enabled = UserView.model_validate(
        await ok(nc, "set_user_disabled", {"user_id": user.id, "disabled": False})
    )
    assert not enabled.disabled
    assert not await in_kv(revocations, revocation_key("user", user.id))
    await ok(nc, "verify_api_key", {"key_hash": digest})
    # Disabling revoked the refresh families for good; a new login works.
    await fails(nc, "refresh", {"refresh_token": tokens.refresh_token}, "invalid_token")
    await login(nc, email)


# -- tokens and keys --------------------------------------------------------------------------
async def test_access_token_verifies_against_the_jwks(nc: Client) -> None:
    user, email = await new_user(nc)
    tokens = await login(nc, email)
    header = jwt.get_unverified_header(tokens.access_token)
    assert header["alg"] == "EdDSA" and header["typ"] == "at+jwt"
    keys = await jwks(nc)
    assert header["kid"] in keys
    for jwk in keys.values():
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    claims = verify(tokens.access_token, keys)
    assert claims["sub"] == user.id and claims["role"] == "user" and claims["jti"]
    assert claims["exp"] - claims["iat"] == TokenSettings().access_ttl_s

    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            tokens.access_token,
            jwt.PyJWK(keys[header["kid"]]),
            algorithms=["EdDSA"],
            audience="someone-else",
            issuer=TokenSettings().issuer,
        )
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(tokens.access_token, jwt.PyJWK(keys[header["kid"]]), algorithms=["RS256"])


async def test_rotate_and_remove_keys(nc: Client, stack: LocalStack, revocations: KeyValue) -> None:
    _, email = await new_user(nc)
    before = await login(nc, email)
    old_kid = jwt.get_unverified_header(before.access_token)["kid"]
    try:
        changed_before = (await revocations.get(revocation_key("jwks", "changed"))).revision
    except KeyNotFoundError:
        changed_before = 0

    rotated = cli(stack, "rotate-keys")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = next(line.split()[1] for line in rotated.stdout.splitlines() if line.startswith("active:"))
    assert new_kid != old_kid
    assert f"retired: {old_kid}" in rotated.stdout
    entry = await revocations.get(revocation_key("jwks", "changed"))
    assert entry.revision is not None and entry.revision > (changed_before or 0)

    keys = await jwks(nc)
    assert {old_kid, new_kid} <= set(keys)  # the retired key stays until its tokens expire
    verify(before.access_token, keys)

    async def signed_with_new_key() -> TokenPair | None:
        tokens = await login(nc, email)
        return tokens if jwt.get_unverified_header(tokens.access_token)["kid"] == new_kid else None

    after = await eventually(signed_with_new_key, timeout=15, what="tokens signed with the new key")
    verify(after.access_token, keys)

    listed = cli(stack, "list-keys", "--json")
    assert listed.returncode == 0, listed.stderr
    states = {row["kid"]: row["state"] for row in map(json.loads, listed.stdout.splitlines())}
    assert states[new_kid] == "active" and states[old_kid] == "retired"

    refused = cli(stack, "remove-key", f"--kid={new_kid}")
    assert refused.returncode == 1 and "rotate-keys first" in refused.stderr
    assert cli(stack, "remove-key", "--kid", "no-such-kid").returncode == 1

    removed = cli(stack, "remove-key", f"--kid={old_kid}")
    assert removed.returncode == 0, removed.stderr
    keys = await jwks(nc)
    assert old_kid not in keys and new_kid in keys
    with pytest.raises(KeyError):
        verify(before.access_token, keys)


async def test_create_admin_command(nc: Client, stack: LocalStack) -> None:
    email = unique_email("admin")
    password = "an admin passphrase 2024"
    created = cli(stack, "create-admin", "--email", email, env={"LLMCHAT_ADMIN_PASSWORD": password})
    assert created.returncode == 0, created.stderr
    tokens = await login(nc, email, password)
    assert verify(tokens.access_token, await jwks(nc))["role"] == "admin"

    again = cli(stack, "create-admin", "--email", email, env={"LLMCHAT_ADMIN_PASSWORD": password})
    assert again.returncode == 1 and "--promote" in again.stderr
    no_password = cli(
        stack, "create-admin", "--email", unique_email("admin"), env={"LLMCHAT_ADMIN_PASSWORD": ""}
    )
    assert no_password.returncode == 1
    weak = cli(
        stack, "create-admin", "--email", unique_email("admin"), env={"LLMCHAT_ADMIN_PASSWORD": "short"}
    )
    assert weak.returncode == 1

    # --promote: an existing user becomes admin with the given password.
    user, user_email = await new_user(nc)
    promoted = cli(
        stack, "create-admin", "--email", user_email, "--promote", env={"LLMCHAT_ADMIN_PASSWORD": password}
    )
    assert promoted.returncode == 0, promoted.stderr
    tokens = await login(nc, user_email, password)
    assert verify(tokens.access_token, await jwks(nc))["role"] == "admin"
    me = UserView.model_validate(await ok(nc, "me", {"user_id": user.id}))
    assert me.role == "admin"


async def test_migrate_command_is_idempotent(stack: LocalStack) -> None:
    result = cli(stack, "migrate")
    assert result.returncode == 0, result.stderr


# -- storage ----------------------------------------------------------------------------------
async def test_database_holds_no_plaintext_secrets(nc: Client, stack: LocalStack) -> None:
    password = "plaintext-canary " + uuid.uuid4().hex
    email = unique_email("canary")
    user = UserView.model_validate(await ok(nc, "register", {"email": email, "password": password}))
    tokens = await login(nc, email, password)
    key = ApiKeyCreated.model_validate(await ok(nc, "create_api_key", {"user_id": user.id}))
    secrets_ = [password, key.key, key.key[len(API_KEY_PREFIX) :], tokens.refresh_token]

    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'auth'")
        assert {"users", "refresh_tokens", "api_keys", "signing_keys"} <= {t["tablename"] for t in tables}
        dump: list[str] = []
        for table in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM auth."{table["tablename"]}" t')
            dump.extend(r["row"] for r in rows)
        stored = await conn.fetchrow(
            "SELECT email, password_hash FROM auth.users WHERE id = $1", uuid.UUID(user.id)
        )
    finally:
        await conn.close()
    text = "\n".join(dump)
    for secret in secrets_:
        assert secret not in text
    assert stored is not None and stored["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert api_key_hash(key.key) in text  # stored as its hash


async def test_migrations_match_the_models(stack: LocalStack) -> None:
    from llmchat_auth.models import SCHEMA, Base
    from llmchat_common.testing.migrations import migration_diff

    assert await migration_diff(stack.env()["LLMCHAT_POSTGRES_DSN"], Base.metadata, SCHEMA) == []


# -- the process ------------------------------------------------------------------------------
async def test_replicas_share_requests_and_stop_cleanly(nc: Client, stack: LocalStack) -> None:
    health = stack.state_dir / "auth-replica.alive"
    replica = await asyncio.to_thread(
        start_auth, stack, name="auth-replica", extra_env={"LLMCHAT_AUTH_HEALTH_FILE": str(health)}
    )
    try:
        # The running service answers start_auth's ping too: the health file says this one is up.
        async def alive() -> bool:
            return health.exists()

        await eventually(alive, timeout=30, what="the replica's health file")
        replies = await asyncio.gather(*(call(nc, "jwks") for _ in range(40)))
        assert all(r.ok for r in replies)
        # Queue group `auth`: the replica took its share (all 40 on one side: p = 2^-39).
        log = (stack.logs / "auth-replica.log").read_text()
        assert subjects.auth_subject("jwks") in log
    finally:
        code = await asyncio.to_thread(replica.stop)
    assert code == 0
    assert not health.exists()


async def test_concurrent_migrations_on_a_fresh_database(stack: LocalStack) -> None:
    dsn = stack.env()["LLMCHAT_POSTGRES_DSN"]
    name = f"auth_migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        fresh = {
            **os.environ,
            **stack.env("auth"),
            "LLMCHAT_POSTGRES_DSN": dsn.rsplit("/", 1)[0] + f"/{name}",
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "llmchat_auth", "migrate"],
                env=fresh,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        results = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
        conn = await asyncpg.connect(fresh["LLMCHAT_POSTGRES_DSN"])
        try:
            assert await conn.fetchval("SELECT version_num FROM auth.alembic_version") == "0001"
            assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'auth'") == 5
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_start_up_gives_up_when_postgres_is_unreachable(stack: LocalStack) -> None:
    env = {
        **os.environ,
        **stack.env("auth"),
        "LLMCHAT_POSTGRES_DSN": "postgresql://llmchat@127.0.0.1:9/llmchat",
        "LLMCHAT_AUTH_STARTUP_TIMEOUT_S": "2",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "llmchat_auth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "auth failed" in result.stderr
