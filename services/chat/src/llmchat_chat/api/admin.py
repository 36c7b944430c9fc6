"""Administration, for callers whose role is `admin` (403 otherwise)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from llmchat_chat.api.deps import AdminDep, AuthenticatorDep, HistoryDep, ServiceDep, UsageDep
from llmchat_chat.api.models import model_entries
from llmchat_chat.errors import InvalidRequest
from llmchat_common.auth_contracts import (
    EraseUserRequest,
    ListUsersRequest,
    SetUserDisabledRequest,
    UserErased,
    UserList,
    UserView,
)
from llmchat_common.history_contracts import Erased, EraseUser
from llmchat_common.usage_contracts import UserRequests, UserRequestsQuery

router = APIRouter(tags=["admin"])


class UserPatch(BaseModel):
    disabled: bool


@router.get("/v1/admin/users")
async def list_users(
    _: AdminDep,
    auth: AuthenticatorDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> UserList:
    return await auth.client.call("list_users", ListUsersRequest(limit=limit, offset=offset), UserList)


@router.patch("/v1/admin/users/{user_id}")
async def update_user(user_id: str, body: UserPatch, caller: AdminDep, auth: AuthenticatorDep) -> UserView:
    """Disabling stops the user's tokens, refresh tokens and API keys at once."""
    if body.disabled and user_id == caller.user_id:
        raise InvalidRequest("administrators cannot disable their own account", param="disabled")
    request = SetUserDisabledRequest(user_id=user_id, disabled=body.disabled)
    user = await auth.client.call("set_user_disabled", request, UserView)
    if body.disabled:
        auth.revocations.add("user", user_id)
    else:
        auth.revocations.discard("user", user_id)
    return user


@router.delete("/v1/admin/users/{user_id}")
async def erase_user(
    user_id: str, caller: AdminDep, auth: AuthenticatorDep, history: HistoryDep, usage: UsageDep
) -> dict[str, Any]:
    """Erases a user: disabled first (nothing new comes in), then their conversations deleted
    and every request of theirs (the conversations' and the others the usage service knows)
    queued for erasure from the event log, and last the account itself. Each step is idempotent: after a
    failure (a 503), the same call finishes the job. Usage rows stay, without content: they are
    the billing record."""
    if user_id == caller.user_id:
        raise InvalidRequest("administrators cannot erase their own account", param="user_id")
    await auth.client.call(
        "set_user_disabled", SetUserDisabledRequest(user_id=user_id, disabled=True), UserView
    )
    auth.revocations.add("user", user_id)
    others = await usage.call("user_requests", UserRequestsQuery(user_id=user_id), UserRequests)
    erased = await history.call(
        "erase_user", EraseUser(user_id=user_id, request_ids=others.request_ids), Erased
    )
    await auth.client.call("erase_user", EraseUserRequest(user_id=user_id), UserErased)
    return {
        "object": "user.deleted",
        "id": user_id,
        "deleted": True,
        "conversations_deleted": erased.conversations,
        # Queued for erasure from the event log: the history service's eraser does it in the
        # background, each request once it has ended.
        "requests_to_erase": erased.requests,
    }


@router.get("/v1/admin/workers")
async def list_workers(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """Workers with a fresh heartbeat, with their capacity and load, their state (`ready`, or
    a model switch's step with its progress) and hardware; and the models with their totals."""
    workers = sorted(await service.registry.workers(), key=lambda w: (w.model, w.worker_id))
    return {
        "object": "list",
        "data": [w.model_dump(mode="json", exclude={"schema_version"}, by_alias=True) for w in workers],
        "models": await model_entries(service.registry),
    }
