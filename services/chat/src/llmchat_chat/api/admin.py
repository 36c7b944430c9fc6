"""Administration, for callers whose role is `admin` (403 otherwise)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from llmchat_chat.api.deps import AdminDep, AuthenticatorDep, ServiceDep
from llmchat_chat.api.models import model_entries
from llmchat_chat.errors import InvalidRequest
from llmchat_common.auth_contracts import ListUsersRequest, SetUserDisabledRequest, UserList, UserView

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
