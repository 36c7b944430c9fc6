"""The edge's JWT verifier and its JWKS cache: no call to auth per request for a known `kid`, a
refetch on an unknown one at most once per `jwks_refetch_min_s`, and a 401 (never a 500) when
the `kid` stays unknown. Real Ed25519 keys and tokens signed as the auth service signs them; the
auth client is a fake that counts JWKS fetches, and the clock is the test's."""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime
from typing import Any, cast

import pytest

import llmchat_chat.auth as edge_auth
from llmchat_auth.keys import NewKey, generate_key, load_private_key, sign_access_token
from llmchat_chat.auth import AuthClient, Revocations, TokenVerifier
from llmchat_chat.errors import Unauthorized
from llmchat_chat.settings import ChatSettings
from llmchat_common.auth_contracts import Jwks

REFETCH_MIN_S = 5.0
MAX_AGE_S = 60.0
SETTINGS = ChatSettings(jwks_refetch_min_s=REFETCH_MIN_S, jwks_max_age_s=MAX_AGE_S)


class FakeAuth:
    """Answers `jwks` with the keys it currently publishes and counts the calls."""

    def __init__(self, *keys: NewKey) -> None:
        self.published = list(keys)
        self.calls = 0

    async def call(self, op: str, request: Any, result_type: type[Jwks]) -> Jwks:
        assert op == "jwks", f"the verifier asked auth for {op!r}"
        self.calls += 1
        return result_type(keys=[dict(k.public_jwk) for k in self.published])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The verifier's clock only (asyncio keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(edge_auth, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def token(key: NewKey, user_id: str = "user-1") -> str:
    signed = sign_access_token(
        user_id,
        "user",
        kid=key.kid,
        private_key=load_private_key(key.private_key_pem),
        now=datetime.now(UTC),
        settings=SETTINGS.tokens,
    )
    return signed.token


async def started(auth: FakeAuth) -> TokenVerifier:
    """A verifier as the edge's lifespan leaves it: the JWKS loaded once."""
    verifier = TokenVerifier(cast(AuthClient, auth), SETTINGS, Revocations())
    await verifier.refresh(force=True)
    assert auth.calls == 1
    return verifier


async def unknown_kid_is_401(verifier: TokenVerifier, tok: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        await verifier.verify(tok)
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "signing key is unknown" in refused.value.message


async def test_known_kid_needs_no_call_to_auth(clock: Clock) -> None:
    key = generate_key()
    auth = FakeAuth(key)
    verifier = await started(auth)
    for n in range(200):
        principal, claims = await verifier.verify(token(key, f"user-{n % 7}"))
        assert principal.user_id == f"user-{n % 7}" and claims["sub"] == principal.user_id
        clock.now += 0.25  # 50 s of traffic: within jwks_max_age_s
    assert auth.calls == 1
    # Past jwks_max_age_s the view is refreshed once (a missed key-change signal), no more.
    clock.now += MAX_AGE_S
    for _ in range(20):
        await verifier.verify(token(key))
    assert auth.calls == 2


async def test_unknown_kid_refetches_the_jwks_and_finds_a_rotated_key(clock: Clock) -> None:
    old, new = generate_key(), generate_key()
    auth = FakeAuth(old)
    verifier = await started(auth)
    auth.published.insert(0, new)  # rotated at auth; this edge missed the signal
    clock.now += REFETCH_MIN_S + 0.1
    principal, _ = await verifier.verify(token(new, "user-2"))
    assert principal.user_id == "user-2"
    assert auth.calls == 2
    for _ in range(20):
        await verifier.verify(token(new))
        await verifier.verify(token(old))
    assert auth.calls == 2


async def test_unknown_kids_refetch_at_most_once_per_window(clock: Clock) -> None:
    key = generate_key()
    auth = FakeAuth(key)
    verifier = await started(auth)
    clock.now += REFETCH_MIN_S + 0.1
    # A burst of tokens with kids auth never published, one by one and all at once.
    for _ in range(10):
        await unknown_kid_is_401(verifier, token(generate_key()))
    await asyncio.gather(*(unknown_kid_is_401(verifier, token(generate_key())) for _ in range(10)))
    assert auth.calls == 2
    clock.now += REFETCH_MIN_S / 2
    await unknown_kid_is_401(verifier, token(generate_key()))
    assert auth.calls == 2
    clock.now += REFETCH_MIN_S / 2 + 0.1
    await unknown_kid_is_401(verifier, token(generate_key()))
    assert auth.calls == 3
    # Known kids kept verifying meanwhile, without a call.
    await verifier.verify(token(key))
    assert auth.calls == 3


async def test_kid_still_unknown_after_the_refetch_is_401(clock: Clock) -> None:
    auth = FakeAuth(generate_key())
    verifier = await started(auth)
    clock.now += REFETCH_MIN_S + 0.1
    stranger = generate_key()
    await unknown_kid_is_401(verifier, token(stranger))
    assert auth.calls == 2  # it did look again before refusing
    # Also before any JWKS was loaded (auth was not up when the edge started).
    cold = TokenVerifier(cast(AuthClient, auth), SETTINGS, Revocations())
    await unknown_kid_is_401(cold, token(stranger))
    assert auth.calls == 3
