"""Model management for admins: the workers' catalog of profiles with their hardware verdicts,
and switching a worker's (or a model's workers') model at runtime.

The edge decides nothing here: each worker owns its catalog (built-in profiles and its
operator's folder) and checks its own hardware, and it refuses a switch before unloading
anything. The edge forwards over NATS (`worker.v1.control.<worker_id>.<op>`), maps a refusal to
a 4xx naming the reason, and records who asked on the audit stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llmchat_chat.api.deps import AdminDep, ServiceDep
from llmchat_chat.backends import ServiceClient
from llmchat_chat.errors import ApiError, Conflict, InvalidRequest, NotFound, ServiceUnavailable
from llmchat_chat.service import ChatService
from llmchat_common import subjects
from llmchat_common.contracts import (
    AuditEvent,
    CatalogProfile,
    CatalogReply,
    SwitchModel,
    SwitchReply,
    WorkerInfo,
)
from llmchat_common.messaging import publish_audit

router = APIRouter(tags=["admin"])
log = logging.getLogger(__name__)

# A catalog is read from files and checked in a thread; a switch only starts (it answers once
# accepted, before draining).
CONTROL_TIMEOUT_S = 10.0


class SwitchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str = Field(min_length=1, max_length=200, description="a profile alias from the catalog")


def _control(service: ChatService, worker_id: str) -> ServiceClient:
    return ServiceClient(
        service.nc,
        lambda op: subjects.worker_control(worker_id, op),
        timeout_s=CONTROL_TIMEOUT_S,
        service="worker",
    )


@router.get("/v1/admin/profiles")
async def list_profiles(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """Every profile the live workers can load, each with every worker's hardware verdict.
    A worker that does not answer is listed in `unreachable`."""
    workers = await service.registry.workers()
    replies = await asyncio.gather(
        *(_control(service, w.worker_id).call("catalog", None, CatalogReply) for w in workers),
        return_exceptions=True,
    )
    merged: dict[str, CatalogProfile] = {}
    unreachable = []
    for worker, reply in zip(workers, replies, strict=True):
        if isinstance(reply, BaseException):
            unreachable.append(worker.worker_id)
            log.warning("catalog not read", extra={"worker_id": worker.worker_id, "error": repr(reply)})
            continue
        for profile in reply.profiles:
            known = merged.get(profile.alias)
            if known is None:
                merged[profile.alias] = profile
            else:
                merged[profile.alias] = known.model_copy(
                    update={"verdicts": [*known.verdicts, *profile.verdicts]}
                )
    return {
        "object": "list",
        "data": [p.model_dump(mode="json") for _, p in sorted(merged.items())],
        "unreachable": unreachable,
    }


@router.post("/v1/admin/workers/{worker_id}/model", status_code=202)
async def switch_worker(
    worker_id: str, body: SwitchBody, caller: AdminDep, service: ServiceDep
) -> JSONResponse:
    """Load another profile on one worker: `202` once the worker has accepted (the switch goes
    on; follow it in `GET /v1/admin/workers`), or a 4xx naming why it was refused before
    anything was unloaded."""
    worker = await _worker(service, worker_id)
    accepted = await _switch(service, worker, body.profile, caller.user_id)
    return JSONResponse(accepted, status_code=202)


@router.post("/v1/admin/models/{model:path}/switch", status_code=202)
async def switch_model(model: str, body: SwitchBody, caller: AdminDep, service: ServiceDep) -> JSONResponse:
    """Every worker serving `model` loads `profile` (each accepts or refuses on its own; the
    first refusal is the answer when none accepts)."""
    workers = (await service.registry.live()).get(model, [])
    if not workers:
        raise NotFound(f"no live worker serves {model!r}", code="model_not_found", param="model")
    results = await asyncio.gather(
        *(_switch(service, w, body.profile, caller.user_id) for w in workers), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, dict)]
    if not accepted:
        first = results[0]
        raise first if isinstance(first, BaseException) else ServiceUnavailable("no worker answered")
    refused = [
        {"worker_id": w.worker_id, "error": getattr(r, "message", str(r)), "code": getattr(r, "code", None)}
        for w, r in zip(workers, results, strict=True)
        if isinstance(r, BaseException)
    ]
    return JSONResponse({"object": "list", "data": accepted, "refused": refused}, status_code=202)


async def _worker(service: ChatService, worker_id: str) -> WorkerInfo:
    missing = NotFound(f"no live worker {worker_id!r}", code="worker_not_found", param="worker_id")
    try:
        subjects.check_token(worker_id)
    except ValueError:
        raise missing from None
    found = next((w for w in await service.registry.workers() if w.worker_id == worker_id), None)
    if found is None:
        raise missing
    return found


_REFUSALS: dict[str, type[ApiError]] = {
    "profile_not_found": NotFound,
    "does_not_fit": InvalidRequest,
    "weights_not_found": InvalidRequest,
    "switch_in_progress": Conflict,
    "same_profile": Conflict,
    "worker_not_ready": Conflict,
}


async def _switch(service: ChatService, worker: WorkerInfo, profile: str, actor: str) -> dict[str, Any]:
    switch_id = f"switch-{uuid.uuid4().hex}"
    command = SwitchModel(profile=profile, requested_by=actor, switch_id=switch_id)
    reply = await _control(service, worker.worker_id).call("switch", command, SwitchReply)
    await _audit(service, actor, worker.worker_id, switch_id, reply, profile)
    if not reply.accepted:
        error = _REFUSALS.get(reply.code or "", InvalidRequest)
        raise error(reply.message, code=reply.code, param="profile")
    return {
        "object": "model_switch",
        "id": switch_id,
        "worker_id": worker.worker_id,
        "from": reply.source,
        "to": reply.target,
        "status": "accepted",
        "message": reply.message,
    }


async def _audit(
    service: ChatService, actor: str, worker_id: str, switch_id: str, reply: SwitchReply, profile: str
) -> None:
    """Who asked for what, and whether the worker took it (the worker records how it ended)."""
    event = AuditEvent(
        action="model_switch",
        actor=actor,
        target=worker_id,
        detail={
            "switch_id": switch_id,
            "worker_id": worker_id,
            "from": reply.source,
            "to": reply.target or profile,
            "code": reply.code,
            "message": reply.message,
        },
        outcome="requested" if reply.accepted else "refused",
        ts=time.time(),
    )
    await publish_audit(service.js, event, f"{switch_id}:{event.outcome}")
