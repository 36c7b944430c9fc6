"""The auth operations, without messaging: requests in, results out, `AuthFailure`s raised.

Invariants: secrets are compared or stored only as hashes; password work (Argon2id) happens
outside database transactions; an unknown email costs the same as a wrong password and gets
the same answer; every lookup on behalf of a user is scoped to that user's id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from llmchat_auth.errors import (
    AccountDisabled,
    CommandRefused,
    EmailTaken,
    InvalidCredentials,
    InvalidRequest,
    InvalidToken,
    NotFound,
    RegistrationClosed,
    WeakPassword,
)
from llmchat_auth.keyring import KeyRing
from llmchat_auth.keys import sign_access_token
from llmchat_auth.models import ApiKey, User
from llmchat_auth.passwords import Passwords
from llmchat_auth.policy import normalise_email, password_problem
from llmchat_auth.repository import AuthRepository, Database, parse_uuid
from llmchat_auth.settings import AuthSettings
from llmchat_common.auth_contracts import (
    API_KEY_PREFIX,
    API_KEY_VISIBLE_CHARS,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyView,
    ChangePasswordRequest,
    CreateApiKeyRequest,
    Done,
    EraseUserRequest,
    Jwks,
    ListUsersRequest,
    LoginRequest,
    LogoutRequest,
    Principal,
    RefreshRequest,
    RegisterRequest,
    RevokeApiKeyRequest,
    SetUserDisabledRequest,
    TokenPair,
    UserErased,
    UserList,
    UserRef,
    UserRole,
    UserView,
    VerifyApiKeyRequest,
    api_key_hash,
    revocation_key,
)

log = logging.getLogger(__name__)

# last_used_at of an API key is written at most this often.
API_KEY_TOUCH_INTERVAL = timedelta(seconds=60)
# Subject/KV-key safe: what a jti we issued looks like.
_JTI = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Revocations(Protocol):
    """The revocations KV bucket every edge watches."""

    async def put(self, key: str, value: bytes) -> None: ...

    async def delete(self, key: str) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """The key (shown once) and its visible prefix."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[: len(API_KEY_PREFIX) + API_KEY_VISIBLE_CHARS]


def revocation_value(**fields: object) -> bytes:
    return json.dumps({"at": int(time.time()), **fields}).encode()


def role_of(user: User) -> UserRole:
    return "admin" if user.role == "admin" else "user"


def user_view(user: User) -> UserView:
    return UserView(
        id=str(user.id),
        email=user.email,
        role=role_of(user),
        disabled=user.disabled,
        created_at=user.created_at,
        updated_at=user.updated_at,
        last_login_at=user.last_login_at,
    )


def api_key_view(key: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=str(key.id),
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


async def existing_user(repo: AuthRepository, user_id: uuid.UUID) -> User:
    user = await repo.user_by_id(user_id)
    if user is None:
        raise NotFound("no such user")
    return user


def _user_id(raw: str) -> uuid.UUID:
    """A malformed id is simply nobody: the same answer as another user's id."""
    parsed = parse_uuid(raw)
    if parsed is None:
        raise NotFound("no such user")
    return parsed


class AuthService:
    def __init__(
        self,
        settings: AuthSettings,
        db: Database,
        passwords: Passwords,
        keyring: KeyRing,
        revocations: Revocations,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.passwords = passwords
        self.keyring = keyring
        self.revocations = revocations
        self.now = clock

    async def prepare(self) -> None:
        await self.passwords.prepare()
        kid = await self.keyring.ensure_active()
        log.info("signing key ready", extra={"kid": kid})

    # -- accounts ---------------------------------------------------------------------------
    async def ping(self) -> Done:
        async with self.db.transaction() as repo:
            await repo.ping()
        return Done()

    async def register(self, req: RegisterRequest) -> UserView:
        if not self.settings.open_registration:
            raise RegistrationClosed()
        email = normalise_email(req.email)
        if email is None:
            raise InvalidRequest("not a valid email address")
        self._check_password(req.password, email)
        async with self.db.transaction() as repo:
            if await repo.user_by_email(email) is not None:
                raise EmailTaken()
        password_hash = await self.passwords.hash(req.password)
        now = self.now()
        async with self.db.transaction() as repo:
            user = await repo.add_user(email=email, password_hash=password_hash, role="user", now=now)
        log.info("user registered", extra={"user_id": str(user.id)})
        return user_view(user)

    async def login(self, req: LoginRequest) -> TokenPair:
        email = normalise_email(req.email)
        user = None
        if email is not None:
            async with self.db.transaction() as repo:
                user = await repo.user_by_email(email)
        if user is None:
            await self.passwords.dummy_verify(req.password)
            log.info("login refused", extra={"reason": "unknown_email"})
            raise InvalidCredentials()
        if not await self.passwords.verify(user.password_hash, req.password):
            log.info("login refused", extra={"reason": "wrong_password", "user_id": str(user.id)})
            raise InvalidCredentials()
        if user.disabled:
            raise AccountDisabled()
        new_hash = None
        if self.passwords.needs_rehash(user.password_hash):
            new_hash = await self.passwords.hash(req.password)
        now = self.now()
        async with self.db.transaction() as repo:
            changes: dict[str, object] = {"last_login_at": now}
            if new_hash is not None:
                changes.update(password_hash=new_hash, updated_at=now)
            current = await repo.update_user(user.id, **changes)
            if current is None:
                raise InvalidCredentials()
            if current.disabled:
                raise AccountDisabled()
            pair = await self._issue(repo, current, now)
        log.info("login", extra={"user_id": str(user.id), "rehashed": new_hash is not None})
        return pair

    async def refresh(self, req: RefreshRequest) -> TokenPair:
        digest = token_hash(req.refresh_token)
        now = self.now()
        async with self.db.transaction() as repo:
            row = await repo.consume_refresh_token(digest, now)
            if row is not None:
                user = await repo.user_by_id(row.user_id)
                if user is None:
                    raise InvalidToken()
                if user.disabled:
                    raise AccountDisabled()
                return await self._issue(repo, user, now, family_id=row.family_id)
            old = await repo.refresh_token_by_hash(digest)
            reused = old is not None and old.used_at is not None
            if old is not None and reused:
                # A rotated token came back: someone holds a copy. The whole family dies,
                # including the token the legitimate holder got last (committed on exit).
                await repo.revoke_family(old.family_id, now)
        if old is not None and reused:
            log.warning(
                "refresh token reused; family revoked",
                extra={"user_id": str(old.user_id), "family_id": str(old.family_id)},
            )
        raise InvalidToken()

    async def logout(self, req: LogoutRequest) -> Done:
        if req.access_jti is not None and not _JTI.match(req.access_jti):
            raise InvalidRequest("access_jti is not a token id")
        user_id = parse_uuid(req.user_id)
        if req.refresh_token and user_id is not None:
            now = self.now()
            async with self.db.transaction() as repo:
                row = await repo.refresh_token_by_hash(token_hash(req.refresh_token))
                # Someone else's token is left alone (and the answer does not say so).
                if row is not None and row.user_id == user_id:
                    await repo.revoke_family(row.family_id, now)
        if req.access_jti is not None:
            await self.revocations.put(
                revocation_key("jti", req.access_jti), revocation_value(exp=req.access_exp)
            )
        log.info("logout", extra={"user_id": req.user_id})
        return Done()

    async def me(self, req: UserRef) -> UserView:
        user_id = _user_id(req.user_id)
        async with self.db.transaction() as repo:
            user = await existing_user(repo, user_id)
        return user_view(user)

    async def change_password(self, req: ChangePasswordRequest) -> TokenPair:
        user_id = _user_id(req.user_id)
        async with self.db.transaction() as repo:
            user = await existing_user(repo, user_id)
        if not await self.passwords.verify(user.password_hash, req.current_password):
            raise InvalidCredentials("the current password is wrong")
        if user.disabled:
            raise AccountDisabled()
        self._check_password(req.new_password, user.email)
        if secrets.compare_digest(req.new_password.encode(), req.current_password.encode()):
            raise WeakPassword("the new password must differ from the current one")
        password_hash = await self.passwords.hash(req.new_password)
        now = self.now()
        async with self.db.transaction() as repo:
            current = await repo.update_user(user_id, password_hash=password_hash, updated_at=now)
            if current is None:
                raise NotFound("no such user")
            # Every other session ends; this one continues with a fresh pair.
            revoked = await repo.revoke_user_refresh_tokens(user_id, now)
            pair = await self._issue(repo, current, now)
        log.info("password changed", extra={"user_id": str(user_id), "revoked_refresh_tokens": revoked})
        return pair

    # -- API keys ---------------------------------------------------------------------------
    async def create_api_key(self, req: CreateApiKeyRequest) -> ApiKeyCreated:
        user_id = _user_id(req.user_id)
        name = req.name.strip()
        if _CONTROL.search(name):
            raise InvalidRequest("the key name must not contain control characters")
        key, prefix = new_api_key()
        now = self.now()
        async with self.db.transaction() as repo:
            user = await existing_user(repo, user_id)
            if user.disabled:
                raise AccountDisabled()
            row = await repo.add_api_key(
                user_id=user_id, name=name, prefix=prefix, key_hash=api_key_hash(key), now=now
            )
        log.info("api key created", extra={"user_id": str(user_id), "key_id": str(row.id)})
        return ApiKeyCreated(**api_key_view(row).model_dump(), key=key)

    async def list_api_keys(self, req: UserRef) -> ApiKeyList:
        user_id = _user_id(req.user_id)
        async with self.db.transaction() as repo:
            keys = await repo.api_keys_of(user_id)
        return ApiKeyList(keys=[api_key_view(k) for k in keys])

    async def revoke_api_key(self, req: RevokeApiKeyRequest) -> Done:
        user_id = _user_id(req.user_id)
        key_id = parse_uuid(req.key_id)
        if key_id is None:
            raise NotFound("no such API key")
        async with self.db.transaction() as repo:
            key = await repo.revoke_api_key(key_id, user_id, self.now())
        if key is None:
            raise NotFound("no such API key")
        # Also when it was revoked before: a retry after a failed put must still reach the edges.
        await self.revocations.put(revocation_key("key", key.key_hash), revocation_value())
        log.info("api key revoked", extra={"user_id": str(user_id), "key_id": str(key_id)})
        return Done()

    async def verify_api_key(self, req: VerifyApiKeyRequest) -> Principal:
        now = self.now()
        async with self.db.transaction() as repo:
            found = await repo.api_key_with_user(req.key_hash)
            if found is None:
                raise InvalidToken("invalid API key")
            key, user = found
            if key.revoked_at is not None or user.disabled:
                raise InvalidToken("invalid API key")
            if key.last_used_at is None or now - key.last_used_at >= API_KEY_TOUCH_INTERVAL:
                await repo.touch_api_key(key.id, now, API_KEY_TOUCH_INTERVAL)
        return Principal(user_id=str(user.id), role=role_of(user), api_key_id=str(key.id))

    # -- administration (the edge checks the caller is an admin) ------------------------------
    async def list_users(self, req: ListUsersRequest) -> UserList:
        async with self.db.transaction() as repo:
            users, total = await repo.list_users(limit=req.limit, offset=req.offset)
        return UserList(users=[user_view(u) for u in users], total=total)

    async def set_user_disabled(self, req: SetUserDisabledRequest) -> UserView:
        user_id = _user_id(req.user_id)
        now = self.now()
        async with self.db.transaction() as repo:
            user = await repo.update_user(user_id, disabled=req.disabled, updated_at=now)
            if user is None:
                raise NotFound("no such user")
            if req.disabled:
                await repo.revoke_user_refresh_tokens(user_id, now)
        # After the commit: the edges then stop accepting the user's access tokens and keys.
        key = revocation_key("user", str(user_id))
        if req.disabled:
            await self.revocations.put(key, revocation_value())
        else:
            await self.revocations.delete(key)
        log.info("user disabled" if req.disabled else "user enabled", extra={"user_id": str(user_id)})
        return user_view(user)

    async def erase_user(self, req: EraseUserRequest) -> UserErased:
        """The account is deleted: email, password hash, keys and sessions. Its revocation
        stays, so access tokens already issued stay refused until they expire."""
        user_id = _user_id(req.user_id)
        await self.revocations.put(revocation_key("user", str(user_id)), revocation_value())
        async with self.db.transaction() as repo:
            if not await repo.delete_user(user_id):
                raise NotFound("no such user")
        log.info("user erased", extra={"user_id": str(user_id)})
        return UserErased(id=str(user_id))

    async def jwks(self) -> Jwks:
        return Jwks(keys=await self.keyring.jwks())

    async def create_admin(self, email_raw: str, password: str, *, promote: bool) -> UserView:
        """Operator command: a new admin, or (with `promote`) an existing user made admin with
        this password."""
        email = normalise_email(email_raw)
        if email is None:
            raise CommandRefused("not a valid email address")
        problem = password_problem(password, email=email, min_length=self.settings.min_password_length)
        if problem is not None:
            raise CommandRefused(problem)
        password_hash = await self.passwords.hash(password)
        now = self.now()
        async with self.db.transaction() as repo:
            existing = await repo.user_by_email(email)
            if existing is None:
                user = await repo.add_user(email=email, password_hash=password_hash, role="admin", now=now)
            elif not promote:
                raise CommandRefused(f"a user with this email exists ({existing.id}); use --promote")
            else:
                promoted = await repo.update_user(
                    existing.id, role="admin", password_hash=password_hash, updated_at=now
                )
                assert promoted is not None
                await repo.revoke_user_refresh_tokens(existing.id, now)
                user = promoted
        log.info("admin created" if existing is None else "user promoted", extra={"user_id": str(user.id)})
        return user_view(user)

    # -- helpers ----------------------------------------------------------------------------
    def _check_password(self, password: str, email: str | None) -> None:
        problem = password_problem(password, email=email, min_length=self.settings.min_password_length)
        if problem is not None:
            raise WeakPassword(problem)

    async def _issue(
        self, repo: AuthRepository, user: User, now: datetime, *, family_id: uuid.UUID | None = None
    ) -> TokenPair:
        """A new access token and a refresh token (a new family unless continuing one)."""
        kid, private_key = await self.keyring.signer(repo)
        tokens = self.settings.tokens
        access = sign_access_token(
            str(user.id), role_of(user), kid=kid, private_key=private_key, now=now, settings=tokens
        )
        refresh = secrets.token_urlsafe(32)
        await repo.add_refresh_token(
            family_id=family_id or uuid.uuid4(),
            user_id=user.id,
            token_hash=token_hash(refresh),
            now=now,
            expires_at=now + timedelta(seconds=self.settings.refresh_ttl_s),
        )
        return TokenPair(
            access_token=access.token,
            expires_in=tokens.access_ttl_s,
            refresh_token=refresh,
            refresh_expires_in=self.settings.refresh_ttl_s,
        )
