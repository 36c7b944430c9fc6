"""Account routes, forwarded to the auth service over NATS request-reply. Register, login and
refresh are public (and throttled); the rest need a caller, and key and password management a
login session."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from llmchat_chat.api.deps import AuthenticatorDep, CallerDep, LimiterDep, SessionDep
from llmchat_chat.api.schemas import Text
from llmchat_chat.ratelimit import Limiter
from llmchat_common.auth_contracts import (
    ApiKeyCreated,
    ApiKeyList,
    ChangePasswordRequest,
    CreateApiKeyRequest,
    Done,
    Jwks,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
    RevokeApiKeyRequest,
    TokenPair,
    UserRef,
    UserView,
)

router = APIRouter(tags=["auth"])


class Credentials(BaseModel):
    email: Text = Field(min_length=3, max_length=254)
    password: Text = Field(min_length=1, max_length=1024)


class RefreshBody(BaseModel):
    refresh_token: Text = Field(min_length=1, max_length=512)


class LogoutBody(BaseModel):
    refresh_token: Text | None = Field(default=None, max_length=512)


class PasswordBody(BaseModel):
    current_password: Text = Field(min_length=1, max_length=1024)
    new_password: Text = Field(min_length=1, max_length=1024)


class ApiKeyBody(BaseModel):
    name: Text = Field(default="", max_length=100)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def throttle(limiter: Limiter, key: str, *, per_address: bool, what: str) -> None:
    """Attempts that cost the auth service an Argon2 run, per account or per client address."""
    settings = limiter.settings
    limit = settings.login_per_address if per_address else settings.login_per_account
    await limiter.throttle(key, limit, settings.login_window_s, what)


async def throttle_login(limiter: Limiter, request: Request, email: str) -> None:
    """Counted before the password is checked, so wrong passwords and unknown emails are
    throttled alike."""
    account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    await throttle(limiter, f"login:account:{account}", per_address=False, what="login attempts")
    await throttle(limiter, f"login:addr:{client_address(request)}", per_address=True, what="login attempts")


@router.post("/v1/auth/register", status_code=201)
async def register(
    body: Credentials, http_request: Request, auth: AuthenticatorDep, limiter: LimiterDep
) -> UserView:
    await throttle(
        limiter, f"register:addr:{client_address(http_request)}", per_address=True, what="registrations"
    )
    return await auth.client.call(
        "register", RegisterRequest(email=body.email, password=body.password), UserView
    )


@router.post("/v1/auth/login")
async def login(
    body: Credentials, request: Request, auth: AuthenticatorDep, limiter: LimiterDep
) -> TokenPair:
    await throttle_login(limiter, request, body.email)
    return await auth.client.call("login", LoginRequest(email=body.email, password=body.password), TokenPair)


@router.post("/v1/auth/refresh")
async def refresh(body: RefreshBody, auth: AuthenticatorDep) -> TokenPair:
    return await auth.client.call("refresh", RefreshRequest(refresh_token=body.refresh_token), TokenPair)


@router.post("/v1/auth/logout", status_code=204)
async def logout(caller: CallerDep, auth: AuthenticatorDep, body: LogoutBody | None = None) -> Response:
    claims = caller.claims or {}
    request = LogoutRequest(
        user_id=caller.user_id,
        refresh_token=body.refresh_token if body else None,
        access_jti=claims.get("jti"),
        access_exp=claims.get("exp"),
    )
    await auth.client.call("logout", request, Done)
    if request.access_jti:
        # This edge stops accepting the token at once; others follow through the KV watch.
        auth.revocations.add("jti", request.access_jti)
    return Response(status_code=204)


@router.get("/v1/auth/me")
async def me(caller: CallerDep, auth: AuthenticatorDep) -> UserView:
    return await auth.client.call("me", UserRef(user_id=caller.user_id), UserView)


@router.post("/v1/auth/password")
async def change_password(
    body: PasswordBody, caller: SessionDep, auth: AuthenticatorDep, limiter: LimiterDep
) -> TokenPair:
    # Each attempt costs an Argon2 verification, and a stolen token must not buy unlimited
    # guesses at the current password: throttled like logins.
    await throttle(limiter, f"password:user:{caller.user_id}", per_address=False, what="password changes")
    request = ChangePasswordRequest(
        user_id=caller.user_id, current_password=body.current_password, new_password=body.new_password
    )
    return await auth.client.call("change_password", request, TokenPair)


@router.post("/v1/auth/api-keys", status_code=201)
async def create_api_key(body: ApiKeyBody, caller: SessionDep, auth: AuthenticatorDep) -> ApiKeyCreated:
    request = CreateApiKeyRequest(user_id=caller.user_id, name=body.name)
    return await auth.client.call("create_api_key", request, ApiKeyCreated)


@router.get("/v1/auth/api-keys")
async def list_api_keys(caller: SessionDep, auth: AuthenticatorDep) -> ApiKeyList:
    return await auth.client.call("list_api_keys", UserRef(user_id=caller.user_id), ApiKeyList)


@router.delete("/v1/auth/api-keys/{key_id}", status_code=204)
async def revoke_api_key(key_id: str, caller: SessionDep, auth: AuthenticatorDep) -> Response:
    await auth.client.call("revoke_api_key", RevokeApiKeyRequest(user_id=caller.user_id, key_id=key_id), Done)
    await auth.forget_api_key(key_id)
    return Response(status_code=204)


@router.get("/.well-known/jwks.json")
async def jwks(response: Response, auth: AuthenticatorDep) -> Jwks:
    response.headers["Cache-Control"] = "public, max-age=60"
    return await auth.verifier.jwks()
