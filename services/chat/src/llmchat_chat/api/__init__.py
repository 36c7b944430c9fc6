from fastapi import APIRouter

from llmchat_chat.api import (
    admin,
    admin_models,
    auth,
    batches,
    chat,
    completions,
    conversations,
    files,
    health,
    jobs,
    models,
    requests,
    responses,
    usage,
)


def build_router() -> APIRouter:
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(models.router)
    router.include_router(chat.router)
    router.include_router(completions.router)
    router.include_router(responses.router)
    router.include_router(files.router)
    router.include_router(batches.router)
    router.include_router(auth.router)
    router.include_router(admin.router)
    router.include_router(admin_models.router)
    router.include_router(conversations.router)
    router.include_router(usage.router)
    router.include_router(requests.router)
    router.include_router(jobs.router)
    return router
