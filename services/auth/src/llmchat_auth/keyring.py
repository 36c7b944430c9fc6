"""Signing keys in the database: the active one (cached briefly), rotation, removal, the JWKS.

Rotation and removal happen in another process (the CLI), so every replica re-reads the keys
at most `key_cache_s` after its last read. A replica still signing with a just-retired key is
harmless: retired keys stay in the JWKS until their tokens have expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llmchat_auth.errors import CommandRefused
from llmchat_auth.keys import KeyRecord, active_key, generate_key, jwks, load_private_key
from llmchat_auth.repository import AuthRepository, Database

KEYS_LOCK = "llmchat:auth:signing-keys"


class KeyRing:
    def __init__(
        self, db: Database, *, cache_s: float, access_ttl_s: int, clock: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._cache_s = cache_s
        self._access_ttl_s = access_ttl_s
        self._clock = clock
        self._active: tuple[float, str, Ed25519PrivateKey] | None = None
        self._loaded: dict[str, Ed25519PrivateKey] = {}

    async def signer(self, repo: AuthRepository) -> tuple[str, Ed25519PrivateKey]:
        """The active key, read through `repo` (the caller's transaction) when the cache is old."""
        cached = self._active
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1], cached[2]
        active = active_key(await repo.signing_keys())
        if active is None:
            # Every key was removed behind our back: make a new one rather than stop issuing.
            await repo.lock(KEYS_LOCK)
            active = active_key(await repo.signing_keys())
            if active is None:
                active = await self._add(repo)
        key = self._loaded.get(active.kid)
        if key is None:
            key = load_private_key(active.private_key_pem)
            self._loaded = {active.kid: key}
        self._active = (time.monotonic(), active.kid, key)
        return active.kid, key

    async def ensure_active(self) -> str:
        """At start: the active key's kid, creating the first key if there is none."""
        async with self._db.transaction() as repo:
            await repo.lock(KEYS_LOCK)
            active = active_key(await repo.signing_keys())
            if active is None:
                active = await self._add(repo)
            return active.kid

    async def rotate(self) -> tuple[str, list[str]]:
        """A new active key; the previous one is retired (still published for a while)."""
        async with self._db.transaction() as repo:
            await repo.lock(KEYS_LOCK)
            new = await self._add(repo)
            retired = await repo.retire_active_keys(self._clock(), keep=new.kid)
        self._active = None
        return new.kid, retired

    async def remove(self, kid: str) -> None:
        """Never published again (e.g. a leaked key). The active key can go only while another
        active key exists to take over: rotate first."""
        async with self._db.transaction() as repo:
            await repo.lock(KEYS_LOCK)
            keys = await repo.signing_keys()
            target = next((k for k in keys if k.kid == kid), None)
            if target is None:
                raise CommandRefused(f"no signing key with kid {kid!r}")
            if target.removed_at is not None:
                raise CommandRefused(f"the key {kid} was already removed")
            if target.active and not any(k.active and k.kid != kid for k in keys):
                raise CommandRefused(
                    f"{kid} is the active signing key; run rotate-keys first, then remove it"
                )
            await repo.remove_signing_key(kid, self._clock())
        self._active = None

    async def all(self) -> list[KeyRecord]:
        async with self._db.transaction() as repo:
            return await repo.signing_keys()

    async def jwks(self) -> list[dict[str, Any]]:
        """Read fresh on every call: verifiers ask rarely, right after a `jwks.changed` signal,
        and must then see the new key."""
        return jwks(await self.all(), self._clock(), self._access_ttl_s)

    def states(self, keys: list[KeyRecord]) -> list[tuple[KeyRecord, str]]:
        now = self._clock()
        active = active_key(keys)
        return [
            (k, "active" if active is not None and k.kid == active.kid else k.state(now, self._access_ttl_s))
            for k in keys
        ]

    async def _add(self, repo: AuthRepository) -> KeyRecord:
        new = generate_key()
        now = self._clock()
        await repo.add_signing_key(new, now)
        return KeyRecord(
            kid=new.kid, private_key_pem=new.private_key_pem, public_jwk=new.public_jwk, created_at=now
        )
