from typing import Annotated, Any

from fastapi import APIRouter, Depends

from llmchat_chat.api.deps import get_service
from llmchat_chat.service import ChatService

router = APIRouter()


@router.get("/v1/models")
async def list_models(service: Annotated[ChatService, Depends(get_service)]) -> dict[str, Any]:
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
