"""Ed25519 signing keys, their JWKs, which of them the JWKS publishes, and access tokens.

Pure functions and small value types: the database side (rotation, caching) is in service.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from llmchat_common.auth_contracts import ACCESS_TOKEN_TYP, UserRole
from llmchat_common.settings import TokenSettings

ALGORITHM = "EdDSA"
# A retired key stays in the JWKS this long past the access-token lifetime, for clock skew and
# for verifiers' JWKS caches.
JWKS_GRACE_S = 60


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class KeyRecord:
    """A signing key as stored (the database row, without the ORM)."""

    kid: str
    private_key_pem: str
    public_jwk: dict[str, Any]
    created_at: datetime
    retired_at: datetime | None = None
    removed_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.retired_at is None and self.removed_at is None

    def state(self, now: datetime, access_ttl_s: int) -> str:
        if self.removed_at is not None:
            return "removed"
        if self.retired_at is None:
            return "active"
        return "retired" if is_published(self, now, access_ttl_s) else "expired"


@dataclass(frozen=True)
class NewKey:
    kid: str
    private_key_pem: str
    public_jwk: dict[str, Any]


def public_jwk(public_key: Ed25519PublicKey, kid: str) -> dict[str, Any]:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def jwk_thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256 of the required members, lexicographic, no spaces): a
    stable kid that says which key it is."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}, separators=(",", ":"))
    return b64url(hashlib.sha256(members.encode()).digest())


def generate_key() -> NewKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    kid = jwk_thumbprint(public)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return NewKey(kid=kid, private_key_pem=pem, public_jwk=public_jwk(public, kid))


def load_private_key(pem: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("signing keys must be Ed25519")
    return key


def is_published(key: KeyRecord, now: datetime, access_ttl_s: int) -> bool:
    """Published: not removed, and active or retired recently enough that tokens it signed may
    still be unexpired."""
    if key.removed_at is not None:
        return False
    if key.retired_at is None:
        return True
    return now - key.retired_at < timedelta(seconds=access_ttl_s + JWKS_GRACE_S)


def jwks(keys: Iterable[KeyRecord], now: datetime, access_ttl_s: int) -> list[dict[str, Any]]:
    """The JWKS `keys`: public members only, newest first."""
    published = [k for k in keys if is_published(k, now, access_ttl_s)]
    published.sort(key=lambda k: k.created_at, reverse=True)
    return [_public_members(k) for k in published]


def _public_members(key: KeyRecord) -> dict[str, Any]:
    allowed = ("kty", "crv", "x", "kid", "alg", "use")
    jwk = {name: key.public_jwk[name] for name in allowed if name in key.public_jwk}
    jwk["kid"] = key.kid
    return jwk


def active_key(keys: Sequence[KeyRecord]) -> KeyRecord | None:
    """The newest key that is neither retired nor removed."""
    candidates = [k for k in keys if k.active]
    return max(candidates, key=lambda k: k.created_at) if candidates else None


@dataclass(frozen=True)
class AccessToken:
    token: str
    jti: str
    expires_at: int


def access_claims(
    user_id: str, role: UserRole, now: datetime, settings: TokenSettings, jti: str | None = None
) -> dict[str, Any]:
    iat = int(now.timestamp())
    return {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": user_id,
        "role": role,
        "iat": iat,
        "exp": iat + settings.access_ttl_s,
        "jti": jti or secrets.token_urlsafe(16),
    }


def sign_access_token(
    user_id: str,
    role: UserRole,
    *,
    kid: str,
    private_key: Ed25519PrivateKey,
    now: datetime,
    settings: TokenSettings,
) -> AccessToken:
    claims = access_claims(user_id, role, now, settings)
    token = jwt.encode(
        claims, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": ACCESS_TOKEN_TYP}
    )
    return AccessToken(token=token, jti=claims["jti"], expires_at=claims["exp"])
