"""Access tokens and the JWKS: real Ed25519 keys, verified with PyJWT as a verifier would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from llmchat_auth.keys import (
    JWKS_GRACE_S,
    KeyRecord,
    active_key,
    generate_key,
    jwk_thumbprint,
    jwks,
    load_private_key,
    sign_access_token,
)
from llmchat_common.settings import TokenSettings

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = TokenSettings(issuer="iss-test", audience="aud-test", access_ttl_s=600)


def minutes(offset: int | None) -> datetime | None:
    return None if offset is None else NOW + timedelta(minutes=offset)


def record(created_min: int, *, retired_min: int | None = None, removed_min: int | None = None) -> KeyRecord:
    new = generate_key()
    return KeyRecord(
        kid=new.kid,
        private_key_pem=new.private_key_pem,
        public_jwk=new.public_jwk,
        created_at=NOW + timedelta(minutes=created_min),
        retired_at=minutes(retired_min),
        removed_at=minutes(removed_min),
    )


def test_access_token_claims_and_header_verify_with_the_published_key() -> None:
    key = record(-60)
    token = sign_access_token(
        "user-1",
        "admin",
        kid=key.kid,
        private_key=load_private_key(key.private_key_pem),
        now=NOW,
        settings=SETTINGS,
    )
    header = jwt.get_unverified_header(token.token)
    assert header == {"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}
    published = {k["kid"]: k for k in jwks([key], NOW, SETTINGS.access_ttl_s)}
    claims = jwt.decode(
        token.token,
        jwt.PyJWK(published[key.kid]),
        algorithms=["EdDSA"],
        audience="aud-test",
        issuer="iss-test",
        options={"verify_exp": False},
    )
    assert claims["sub"] == "user-1" and claims["role"] == "admin"
    assert claims["iat"] == int(NOW.timestamp()) and claims["exp"] == claims["iat"] + 600
    assert claims["jti"] == token.jti and len(token.jti) >= 16
    assert token.expires_at == claims["exp"]


def test_every_token_gets_its_own_jti() -> None:
    key = record(0)
    private = load_private_key(key.private_key_pem)
    jtis = {
        sign_access_token("u", "user", kid=key.kid, private_key=private, now=NOW, settings=SETTINGS).jti
        for _ in range(50)
    }
    assert len(jtis) == 50


def test_a_token_does_not_verify_against_another_key() -> None:
    signer, other = record(0), record(1)
    token = sign_access_token(
        "u",
        "user",
        kid=signer.kid,
        private_key=load_private_key(signer.private_key_pem),
        now=NOW,
        settings=SETTINGS,
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token.token,
            jwt.PyJWK(other.public_jwk),
            algorithms=["EdDSA"],
            audience="aud-test",
            options={"verify_exp": False},
        )


def test_jwks_publishes_active_and_recently_retired_keys_only() -> None:
    ttl = SETTINGS.access_ttl_s
    window_min = (ttl + JWKS_GRACE_S) / 60  # 11 minutes
    active = record(-1)
    recently_retired = record(-30, retired_min=-1)
    just_inside = record(-60, retired_min=-int(window_min) + 1)
    just_outside = record(-90, retired_min=-int(window_min) - 1)
    removed_active = record(-5, removed_min=-2)
    removed_retired = record(-40, retired_min=-3, removed_min=-2)
    keys = [just_outside, removed_active, active, recently_retired, just_inside, removed_retired]

    published = jwks(keys, NOW, ttl)
    assert [k["kid"] for k in published] == [active.kid, recently_retired.kid, just_inside.kid]
    for jwk in published:
        assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert "d" not in jwk


def test_the_active_key_is_the_newest_neither_retired_nor_removed() -> None:
    old = record(-10, retired_min=-1)
    current = record(-1)
    removed = record(0, removed_min=0)
    assert active_key([old, current, removed]) == current
    assert active_key([old, removed]) is None


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its Ed25519 example key.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from llmchat_auth.keys import b64url

    x = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    public = Ed25519PublicKey.from_public_bytes(x)
    assert b64url(x) == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert jwk_thumbprint(public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    key = generate_key()
    assert key.kid == key.public_jwk["kid"] and len(key.kid) == 43
