"""The auth service's request-reply contract (`auth.v1.rpc.<op>`, see subjects.py).

Only the edge calls these subjects (NATS permissions enforce it), after it has authenticated the
caller: operations on "my" account carry the `user_id` the edge verified. Every reply is an
`RpcReply` (rpc.py): `ok` with a `result`, or an `error` with a stable `code`.
Secrets cross the wire only where they must (a password at login/registration, a refresh
token); API keys never do: the edge sends their SHA-256.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UserRole = Literal["user", "admin"]

API_KEY_PREFIX = "sk-llmchat-"
# How many characters of the key (after API_KEY_PREFIX) are kept in clear to tell keys apart.
API_KEY_VISIBLE_CHARS = 8
# The JWT `typ` header of access tokens (RFC 9068).
ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a header value, not a secret


def api_key_hash(key: str) -> str:
    """API keys are 256-bit random: a fast hash is the right lookup key (no brute force)."""
    return hashlib.sha256(key.encode()).hexdigest()


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Principal(_Msg):
    """Who is calling, as the edge established it (JWT or API key)."""

    user_id: str
    role: UserRole
    api_key_id: str | None = None


# -- requests -------------------------------------------------------------------------------
class RegisterRequest(_Msg):
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(max_length=1024)


class LoginRequest(_Msg):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class RefreshRequest(_Msg):
    refresh_token: str = Field(max_length=512)


class LogoutRequest(_Msg):
    """Revokes the refresh token's family and denylists the access token until it expires."""

    user_id: str
    refresh_token: str | None = Field(default=None, max_length=512)
    access_jti: str | None = None
    access_exp: int | None = None


class UserRef(_Msg):
    user_id: str


class ChangePasswordRequest(_Msg):
    user_id: str
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class CreateApiKeyRequest(_Msg):
    user_id: str
    name: str = Field(default="", max_length=100)


class RevokeApiKeyRequest(_Msg):
    user_id: str
    key_id: str


class VerifyApiKeyRequest(_Msg):
    key_hash: str = Field(min_length=64, max_length=64)


class ListUsersRequest(_Msg):
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class SetUserDisabledRequest(_Msg):
    user_id: str
    disabled: bool


class EraseUserRequest(_Msg):
    """The account itself (email, password hash, keys, sessions) is deleted."""

    user_id: str


# -- results --------------------------------------------------------------------------------
class TokenPair(_Msg):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class UserErased(_Msg):
    id: str
    deleted: bool = True


class UserView(_Msg):
    id: str
    email: str
    role: UserRole
    disabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None = None


class UserList(_Msg):
    users: list[UserView]
    total: int


class ApiKeyView(_Msg):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyView):
    """The only time the key itself is returned."""

    key: str


class ApiKeyList(_Msg):
    keys: list[ApiKeyView]


class Jwks(_Msg):
    keys: list[dict[str, Any]]


class Done(_Msg):
    ok: bool = True


# -- revocations (KV bucket, written by auth, watched by every edge) -------------------------
RevocationKind = Literal["user", "jti", "key", "jwks"]


def revocation_key(kind: RevocationKind, ident: str) -> str:
    """Keys of the revocation bucket: `user.<id>` (disabled), `jti.<jti>` (logged out access
    token), `key.<sha256>` (revoked API key), `jwks.changed` (keys rotated or removed)."""
    return f"{kind}.{ident}"
