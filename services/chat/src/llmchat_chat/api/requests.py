"""A past request's exact stored events, token by token: for its owner and for admins (anyone
else gets the 404 of a request that does not exist)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from llmchat_chat.api.deps import CallerDep, ServiceDep
from llmchat_chat.errors import NotFound
from llmchat_common import subjects

router = APIRouter(tags=["requests"])

MAX_EVENTS = 100_000


@router.get("/v1/requests/{request_id}/events")
async def request_events(
    request_id: str,
    caller: CallerDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = MAX_EVENTS,
) -> dict[str, Any]:
    missing = NotFound("request not found", code="request_not_found")
    try:
        subjects.check_token(request_id)
    except ValueError:
        raise missing from None
    events = await service.stored_events(request_id, limit=limit)
    owners = {e.event.user_id for e in events}
    if not events or (not caller.is_admin and owners != {caller.user_id}):
        raise missing
    return {
        "object": "list",
        "request_id": request_id,
        "data": [{"stream_seq": e.stream_seq, **e.event.model_dump(mode="json")} for e in events],
    }
