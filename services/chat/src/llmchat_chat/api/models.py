from typing import Any

from fastapi import APIRouter

from llmchat_chat.api.deps import CallerDep, ServiceDep
from llmchat_chat.errors import ModelNotFound
from llmchat_chat.service import ModelRegistry
from llmchat_common.contracts import WorkerInfo

router = APIRouter()


def model_entry(name: str, workers: list[WorkerInfo]) -> dict[str, Any]:
    """OpenAI's model object; `workers`, `capacity`, `running`, `max_model_len` and
    `capabilities` (what the model takes: chat or embeddings, tools, JSON output, input
    modalities; null until a worker says) are ours."""
    return {
        "id": name,
        "object": "model",
        "created": int(min((w.started_at for w in workers), default=0)),
        "owned_by": "llmchat",
        "workers": len(workers),
        "capacity": sum(w.capacity for w in workers),
        "running": sum(w.running for w in workers),
        "max_model_len": max((w.max_model_len for w in workers), default=None),
        "capabilities": workers[0].capabilities.model_dump() if workers else None,
    }


def model_entries(registry: ModelRegistry, live: dict[str, list[WorkerInfo]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys([*registry.catalog, *live]))
    return [model_entry(name, live.get(name, [])) for name in names]


@router.get("/v1/models")
async def list_models(service: ServiceDep, _: CallerDep) -> dict[str, Any]:
    """OpenAI's model list; `workers`, `capacity`, `running` and `max_model_len` are ours."""
    live = await service.registry.live()
    return {"object": "list", "data": model_entries(service.registry, live)}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, service: ServiceDep, _: CallerDep) -> dict[str, Any]:
    """One model object (OpenAI's `models.retrieve`); 404 for a model nobody serves."""
    if not await service.registry.known(model):
        raise ModelNotFound(f"the model {model!r} does not exist", param="model")
    return model_entry(model, (await service.registry.live()).get(model, []))
