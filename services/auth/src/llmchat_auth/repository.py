"""SQL of schema `auth`. One `AuthRepository` per transaction (`Database.transaction()`).

Statements that race between replicas are single atomic statements (UPDATE ... WHERE ...
RETURNING) or run under an advisory transaction lock; nothing reads, decides in Python, then
writes without one of those.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from llmchat_auth.errors import EmailTaken
from llmchat_auth.keys import KeyRecord, NewKey
from llmchat_auth.models import ApiKey, RefreshToken, SigningKey, User
from llmchat_common.db import advisory_lock_id

UNIQUE_VIOLATION = "23505"


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


class AuthRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.s = session

    async def lock(self, name: str) -> None:
        """An advisory lock held until this transaction ends."""
        await self.s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_lock_id(name)})

    async def ping(self) -> None:
        await self.s.execute(text("SELECT 1"))

    # -- users ------------------------------------------------------------------------------
    async def user_by_id(self, user_id: uuid.UUID) -> User | None:
        return await self.s.get(User, user_id)

    async def user_by_email(self, email: str) -> User | None:
        result = await self.s.scalars(select(User).where(User.email == email))
        return result.one_or_none()

    async def add_user(self, *, email: str, password_hash: str, role: str, now: datetime) -> User:
        user = User(
            id=uuid.uuid4(),
            email=email,
            password_hash=password_hash,
            role=role,
            disabled=False,
            created_at=now,
            updated_at=now,
        )
        self.s.add(user)
        try:
            await self.s.flush()
        except IntegrityError as exc:
            # The id is random: the only unique value a caller controls is the email.
            if getattr(exc.orig, "sqlstate", None) == UNIQUE_VIOLATION:
                raise EmailTaken() from exc
            raise
        return user

    async def update_user(self, user_id: uuid.UUID, **values: Any) -> User | None:
        result = await self.s.scalars(
            update(User)
            .where(User.id == user_id)
            .values(**values)
            .returning(User)
            .execution_options(populate_existing=True)
        )
        return result.one_or_none()

    async def delete_user(self, user_id: uuid.UUID) -> bool:
        """The user's row, and with it (ON DELETE CASCADE) their API keys and refresh tokens."""
        result = await self.s.execute(delete(User).where(User.id == user_id))
        return bool(getattr(result, "rowcount", 0))

    async def list_users(self, *, limit: int, offset: int) -> tuple[list[User], int]:
        users = await self.s.scalars(
            select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
        )
        total = await self.s.scalar(select(func.count()).select_from(User))
        return list(users), int(total or 0)

    # -- refresh tokens ---------------------------------------------------------------------
    async def add_refresh_token(
        self,
        *,
        family_id: uuid.UUID,
        user_id: uuid.UUID,
        token_hash: str,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        self.s.add(
            RefreshToken(
                id=uuid.uuid4(),
                family_id=family_id,
                user_id=user_id,
                token_hash=token_hash,
                created_at=now,
                expires_at=expires_at,
            )
        )
        await self.s.flush()

    async def consume_refresh_token(self, token_hash: str, now: datetime) -> RefreshToken | None:
        """Marks a usable token used and returns it; of two concurrent uses exactly one wins."""
        result = await self.s.scalars(
            update(RefreshToken)
            .where(
                RefreshToken.token_hash == token_hash,
                RefreshToken.used_at.is_(None),
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > now,
            )
            .values(used_at=now)
            .returning(RefreshToken)
        )
        return result.one_or_none()

    async def refresh_token_by_hash(self, token_hash: str) -> RefreshToken | None:
        result = await self.s.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash))
        return result.one_or_none()

    async def revoke_family(self, family_id: uuid.UUID, now: datetime) -> int:
        result = await self.s.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def revoke_user_refresh_tokens(self, user_id: uuid.UUID, now: datetime) -> int:
        result = await self.s.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # -- API keys ---------------------------------------------------------------------------
    async def add_api_key(
        self, *, user_id: uuid.UUID, name: str, prefix: str, key_hash: str, now: datetime
    ) -> ApiKey:
        key = ApiKey(
            id=uuid.uuid4(), user_id=user_id, name=name, prefix=prefix, key_hash=key_hash, created_at=now
        )
        self.s.add(key)
        await self.s.flush()
        return key

    async def api_keys_of(self, user_id: uuid.UUID) -> list[ApiKey]:
        result = await self.s.scalars(
            select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc(), ApiKey.id)
        )
        return list(result)

    async def revoke_api_key(self, key_id: uuid.UUID, user_id: uuid.UUID, now: datetime) -> ApiKey | None:
        """The owner's key, revoked now unless it already was; None if it is not theirs."""
        result = await self.s.scalars(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id).with_for_update()
        )
        key = result.one_or_none()
        if key is not None and key.revoked_at is None:
            key.revoked_at = now
            await self.s.flush()
        return key

    async def api_key_with_user(self, key_hash: str) -> tuple[ApiKey, User] | None:
        result = await self.s.execute(
            select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == key_hash)
        )
        row = result.one_or_none()
        return None if row is None else (row[0], row[1])

    async def touch_api_key(self, key_id: uuid.UUID, now: datetime, interval: timedelta) -> None:
        """At most one write per key per `interval`, however many requests use it."""
        await self.s.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < now - interval),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )

    # -- signing keys -----------------------------------------------------------------------
    async def signing_keys(self) -> list[KeyRecord]:
        rows = await self.s.scalars(select(SigningKey).order_by(SigningKey.created_at.desc()))
        return [
            KeyRecord(
                kid=row.kid,
                private_key_pem=row.private_key_pem,
                public_jwk=dict(row.public_jwk),
                created_at=row.created_at,
                retired_at=row.retired_at,
                removed_at=row.removed_at,
            )
            for row in rows
        ]

    async def add_signing_key(self, key: NewKey, now: datetime) -> None:
        self.s.add(
            SigningKey(
                kid=key.kid, private_key_pem=key.private_key_pem, public_jwk=key.public_jwk, created_at=now
            )
        )
        await self.s.flush()

    async def retire_active_keys(self, now: datetime, *, keep: str) -> list[str]:
        result = await self.s.scalars(
            update(SigningKey)
            .where(SigningKey.kid != keep, SigningKey.retired_at.is_(None), SigningKey.removed_at.is_(None))
            .values(retired_at=now)
            .returning(SigningKey.kid)
        )
        return list(result)

    async def remove_signing_key(self, kid: str, now: datetime) -> None:
        await self.s.execute(
            update(SigningKey)
            .where(SigningKey.kid == kid, SigningKey.removed_at.is_(None))
            .values(removed_at=now)
            .execution_options(synchronize_session=False)
        )


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthRepository]:
        """Commits when the block ends, rolls back if it raises."""
        async with self._sessions() as session, session.begin():
            yield AuthRepository(session)

    async def dispose(self) -> None:
        await self.engine.dispose()
