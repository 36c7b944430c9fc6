from typing import Any

from fastapi import APIRouter

from llmchat_chat.api.deps import CallerDep, ServiceDep
from llmchat_chat.service import ModelRegistry
from llmchat_common.contracts import WorkerInfo

router = APIRouter()


def model_entries(registry: ModelRegistry, live: dict[str, list[WorkerInfo]]) -> list[dict[str, Any]]:
    """OpenAI's model objects; `workers`, `capacity`, `running` and `max_model_len` are ours."""
    names = list(dict.fromkeys([*registry.catalog, *live]))
    data = []
    for name in names:
        workers = live.get(name, [])
        data.append(
            {
                "id": name,
                "object": "model",
                "created": int(min((w.started_at for w in workers), default=0)),
                "owned_by": "llmchat",
                "workers": len(workers),
                "capacity": sum(w.capacity for w in workers),
                "running": sum(w.running for w in workers),
                "max_model_len": max((w.max_model_len for w in workers), default=None),
            }
        )
    return data


@router.get("/v1/models")
async def list_models(service: ServiceDep, _: CallerDep) -> dict[str, Any]:
    """OpenAI's model list; `workers`, `capacity`, `running` and `max_model_len` are ours."""
    live = await service.registry.live()
    return {"object": "list", "data": model_entries(service.registry, live)}
