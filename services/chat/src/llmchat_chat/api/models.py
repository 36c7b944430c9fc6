from typing import Any

from fastapi import APIRouter

from llmchat_chat.api.deps import CallerDep, ServiceDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(service: ServiceDep, _: CallerDep) -> dict[str, Any]:
    """OpenAI's model list; `workers`, `capacity`, `running` and `max_model_len` are ours."""
    live = await service.registry.live()
    names = list(dict.fromkeys([*service.registry.catalog, *live]))
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
    return {"object": "list", "data": data}
