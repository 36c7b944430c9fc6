"""Who is calling: bearer JWTs verified locally against auth's JWKS, API keys checked through
auth with a short Redis cache, and revocations (logout, disabled users, revoked keys, rotated
signing keys) followed live from auth's KV bucket.

Invariants: no per-request call to auth for a JWT; the algorithm is pinned (EdDSA) and `typ`,
`iss`, `aud`, `exp`, `iat`, `sub`, `jti` are required; an API key never leaves this process in
clear (auth gets its SHA-256); no credential is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, TypeVar

import jwt
from nats.aio.client import Client
from nats.js.kv import KeyValue
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmchat_chat.backends import ServiceClient
from llmchat_chat.errors import ApiError, Unauthorized
from llmchat_chat.settings import ChatSettings
from llmchat_common import subjects
from llmchat_common.auth_contracts import (
    ACCESS_TOKEN_TYP,
    API_KEY_PREFIX,
    Jwks,
    Principal,
    VerifyApiKeyRequest,
    api_key_hash,
)
from llmchat_common.messaging import REVOCATIONS_TTL_S

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)
ALGORITHM = "EdDSA"


class AuthClient(ServiceClient):
    """Request-reply to the auth service; its error codes become the edge's API errors."""

    def __init__(self, nc: Client, timeout_s: float) -> None:
        super().__init__(nc, subjects.auth_subject, timeout_s=timeout_s, service="authentication")


class Revocations:
    """Local view of auth's revocation bucket, kept current by a KV watch (history included, so
    an edge started later still knows every live revocation). Entries are forgotten when the
    bucket's own TTL would have expired them: by then the tokens they stop have expired too."""

    def __init__(self, ttl_s: float = REVOCATIONS_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._seen: dict[str, dict[str, float]] = {"user": {}, "jti": {}, "key": {}}
        self._applied = 0
        self.jwks_changed = asyncio.Event()
        # Set once every live revocation is known: the edge serves only after that.
        self.loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, kv: KeyValue) -> None:
        self._task = asyncio.create_task(self._follow(kv))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def is_revoked(self, kind: str, ident: str) -> bool:
        return ident in self._seen[kind]

    def add(self, kind: str, ident: str) -> None:
        self._seen[kind][ident] = time.monotonic()

    def discard(self, kind: str, ident: str) -> None:
        self._seen[kind].pop(ident, None)

    def apply(self, key: str, deleted: bool) -> None:
        kind, _, ident = key.partition(".")
        if kind in self._seen:
            if deleted:
                self.discard(kind, ident)
            else:
                self.add(kind, ident)
        elif kind == "jwks" and not deleted:
            self.jwks_changed.set()
        self._applied += 1
        if self._applied % 1024 == 0:
            self.prune()

    def prune(self) -> None:
        cutoff = time.monotonic() - self._ttl_s
        for entries in self._seen.values():
            for ident in [i for i, at in entries.items() if at < cutoff]:
                del entries[ident]

    async def _follow(self, kv: KeyValue) -> None:
        while True:
            try:
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:  # end of the initial values
                        self.loaded.set()
                        continue
                    self.apply(entry.key, entry.operation in ("DEL", "PURGE"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following after a broker hiccup
                log.warning("revocation watch restarted", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)


class TokenVerifier:
    """Access-token verification against a cached JWKS, refetched on an unknown `kid` (at most
    once per `refetch_min_s`) and when auth signals a key change."""

    def __init__(self, client: AuthClient, settings: ChatSettings, revocations: Revocations) -> None:
        self._client = client
        self._settings = settings
        self._revocations = revocations
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def jwks(self) -> Jwks:
        return await self._client.call("jwks", None, Jwks)

    async def refresh(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < self._settings.jwks_refetch_min_s:
                return
            self._fetched_at = time.monotonic()
            jwks = await self.jwks()
            keys: dict[str, jwt.PyJWK] = {}
            for jwk in jwks.keys:
                with contextlib.suppress(jwt.PyJWTError, KeyError, ValueError):
                    if jwk.get("kid") and jwk.get("alg", ALGORITHM) == ALGORITHM:
                        keys[str(jwk["kid"])] = jwt.PyJWK.from_dict(jwk, algorithm=ALGORITHM)
            self._keys = keys
            self._loaded_at = time.monotonic()

    async def _key(self, kid: str) -> jwt.PyJWK:
        # A key change, or a view older than jwks_max_age_s (a missed signal), refetches; the
        # signal is cleared only once a refetch succeeded, so a removed key cannot stay trusted.
        changed = self._revocations.jwks_changed.is_set()
        if changed or time.monotonic() - self._loaded_at > self._settings.jwks_max_age_s:
            try:
                await self.refresh(force=changed)
                if changed:
                    self._revocations.jwks_changed.clear()
            except ApiError:
                if changed:
                    raise  # fail closed: a key may have been removed
        key = self._keys.get(kid)
        if key is None:
            await self.refresh()
            key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("the token's signing key is unknown")
        return key

    async def verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the token is malformed") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("the token's algorithm is not accepted")
        if header.get("typ") != ACCESS_TOKEN_TYP:
            raise Unauthorized("the token is not an access token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the token has no key id")
        key = await self._key(kid)
        tokens = self._settings.tokens
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=tokens.audience,
                issuer=tokens.issuer,
                leeway=self._settings.token_leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("the token is invalid") from None
        role = claims.get("role")
        if role not in ("user", "admin") or not isinstance(claims["sub"], str):
            raise Unauthorized("the token is invalid")
        lifetime = claims["exp"] - claims["iat"]
        if (
            not isinstance(lifetime, int | float)
            or lifetime > tokens.access_ttl_s + self._settings.token_leeway_s
        ):
            # We never issue longer-lived tokens: a leaked key cannot mint lasting ones.
            raise Unauthorized("the token's lifetime is longer than this deployment issues")
        if self._revocations.is_revoked("jti", claims["jti"]):
            raise Unauthorized("the token was revoked", code="token_revoked")
        return Principal(user_id=claims["sub"], role=role), claims


class Authenticator:
    """Bearer credentials → Principal. JWTs: local verification. API keys: Redis cache, then
    auth. Revocations apply to both at once."""

    def __init__(
        self,
        client: AuthClient,
        verifier: TokenVerifier,
        revocations: Revocations,
        redis: Redis,
        settings: ChatSettings,
    ) -> None:
        self.client = client
        self.verifier = verifier
        self.revocations = revocations
        self._redis = redis
        self._settings = settings
        secret = settings.cache_secret.get_secret_value() if settings.cache_secret else None
        # Without a shared secret each edge keeps its own entries (other edges' are misses).
        self._cache_secret = secret.encode() if secret else secrets.token_bytes(32)

    async def authenticate(self, authorization: str | None) -> tuple[Principal, dict[str, Any] | None]:
        """The principal, and the token's claims when it was a JWT (None for an API key)."""
        if not authorization:
            raise Unauthorized(
                "missing credentials: send `Authorization: Bearer <token or API key>`", error=None
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorized("the Authorization header must be `Bearer <token or API key>`")
        if credential.startswith(API_KEY_PREFIX):
            principal, claims = await self._api_key(credential), None
        else:
            principal, claims = await self.verifier.verify(credential)
        if self.revocations.is_revoked("user", principal.user_id):
            raise Unauthorized("this account is disabled", code="account_disabled")
        return principal, claims

    async def _api_key(self, key: str) -> Principal:
        digest = api_key_hash(key)
        if self.revocations.is_revoked("key", digest):
            raise Unauthorized("the API key was revoked")
        cache_key = f"apikey:{digest}"
        with contextlib.suppress(RedisError):
            cached = self._unseal(digest, await self._redis.get(cache_key))
            if cached is not None:
                return cached
        principal = await self.client.call("verify_api_key", VerifyApiKeyRequest(key_hash=digest), Principal)
        with contextlib.suppress(RedisError):
            ttl = self._settings.api_key_cache_s
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(cache_key, self._seal(digest, principal), ex=ttl)
                pipe.set(f"apikey-id:{principal.api_key_id}", digest, ex=ttl)
                await pipe.execute()
        return principal

    def _mac(self, digest: str, body: bytes) -> str:
        return hmac.new(self._cache_secret, digest.encode() + b"|" + body, hashlib.sha256).hexdigest()

    def _seal(self, digest: str, principal: Principal) -> bytes:
        """Cache entries carry an HMAC under a secret only edges hold: whoever else can write
        to Redis cannot forge a principal (say, an admin one) for a key."""
        body = principal.model_dump_json().encode()
        return self._mac(digest, body).encode() + b"." + body

    def _unseal(self, digest: str, value: bytes | None) -> Principal | None:
        if not value:
            return None
        mac, _, body = value.partition(b".")
        if not hmac.compare_digest(mac, self._mac(digest, body).encode()):
            log.warning("api key cache entry failed its integrity check")
            return None
        return Principal.model_validate_json(body)

    async def forget_api_key(self, key_id: str) -> None:
        """Drops a revoked key from the shared cache at once (other edges also see the
        revocation through the KV watch; the cache TTL bounds it in any case)."""
        with contextlib.suppress(RedisError):
            digest = await self._redis.get(f"apikey-id:{key_id}")
            if digest:
                await self._redis.delete(f"apikey:{digest.decode() if isinstance(digest, bytes) else digest}")
