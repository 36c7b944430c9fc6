"""The request-reply operations on `auth.v1.rpc.<op>`, in queue group `auth` so replicas share
the load. Every request gets an `RpcReply`, whatever happens (llmchat_common.rpc)."""

from __future__ import annotations

from faststream.nats import NatsBroker
from nats.js.kv import KeyValue

from llmchat_auth.service import AuthService
from llmchat_common import subjects
from llmchat_common.auth_contracts import (
    ChangePasswordRequest,
    CreateApiKeyRequest,
    EraseUserRequest,
    ListUsersRequest,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
    RevokeApiKeyRequest,
    SetUserDisabledRequest,
    UserRef,
    VerifyApiKeyRequest,
)
from llmchat_common.rpc import Operation, no_args, serve_operations


class KvRevocations:
    """The service's `Revocations` port on a JetStream KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def put(self, key: str, value: bytes) -> None:
        await self._kv.put(key, value)

    async def delete(self, key: str) -> None:
        await self._kv.delete(key)


def operations(service: AuthService) -> dict[str, Operation]:
    return {
        "ping": no_args(service.ping),
        "register": Operation(RegisterRequest, service.register),
        "login": Operation(LoginRequest, service.login),
        "refresh": Operation(RefreshRequest, service.refresh),
        "logout": Operation(LogoutRequest, service.logout),
        "me": Operation(UserRef, service.me),
        "change_password": Operation(ChangePasswordRequest, service.change_password),
        "create_api_key": Operation(CreateApiKeyRequest, service.create_api_key),
        "list_api_keys": Operation(UserRef, service.list_api_keys),
        "revoke_api_key": Operation(RevokeApiKeyRequest, service.revoke_api_key),
        "verify_api_key": Operation(VerifyApiKeyRequest, service.verify_api_key),
        "list_users": Operation(ListUsersRequest, service.list_users),
        "set_user_disabled": Operation(SetUserDisabledRequest, service.set_user_disabled),
        "erase_user": Operation(EraseUserRequest, service.erase_user),
        "jwks": no_args(service.jwks),
    }


def register_handlers(broker: NatsBroker, service: AuthService, *, max_workers: int) -> None:
    serve_operations(
        broker,
        operations(service),
        service="auth",
        subject=subjects.auth_subject,
        queue=subjects.AUTH_QUEUE,
        max_workers=max_workers,
        unavailable="the authentication service is unavailable; try again",
    )
