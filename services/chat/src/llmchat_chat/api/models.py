from typing import Any

from fastapi import APIRouter

from llmchat_chat.api.deps import CallerDep, ServiceDep
from llmchat_chat.errors import ModelNotFound
from llmchat_chat.service import ModelRegistry
from llmchat_common.contracts import ServedModel, WorkerInfo

router = APIRouter()


def model_entry(name: str, workers: list[WorkerInfo], lately: ServedModel | None = None) -> dict[str, Any]:
    """OpenAI's model object; `workers`, `capacity`, `running`, `max_model_len`,
    `capabilities` (what the model takes: chat or embeddings, tools, JSON output, input
    modalities; null until a worker says) and `status` are ours. `status`: `serving`, or
    `no_worker` (requests queue until their deadline or until a worker comes back)."""
    capabilities = workers[0].capabilities if workers else (lately.capabilities if lately else None)
    context = max((w.max_model_len for w in workers), default=lately.max_model_len if lately else None)
    return {
        "id": name,
        "object": "model",
        "created": int(min((w.started_at for w in workers), default=0)),
        "owned_by": "llmchat",
        "workers": len(workers),
        "capacity": sum(w.capacity for w in workers),
        "running": sum(w.running for w in workers),
        "max_model_len": context,
        "capabilities": None if capabilities is None else capabilities.model_dump(),
        "status": "serving" if workers else "no_worker",
    }


async def model_entries(registry: ModelRegistry) -> list[dict[str, Any]]:
    live, lately = await registry.live(), await registry.served()
    return [model_entry(name, live.get(name, []), lately.get(name)) for name in await registry.names()]


@router.get("/v1/models")
async def list_models(service: ServiceDep, _: CallerDep) -> dict[str, Any]:
    """OpenAI's model list, with the models that lost their last worker lately (`no_worker`)."""
    return {"object": "list", "data": await model_entries(service.registry)}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, service: ServiceDep, _: CallerDep) -> dict[str, Any]:
    """One model object (OpenAI's `models.retrieve`); 404 for a model nobody serves."""
    registry = service.registry
    if not await registry.known(model):
        raise ModelNotFound(f"the model {model!r} does not exist", param="model")
    return model_entry(model, (await registry.live()).get(model, []), (await registry.served()).get(model))
