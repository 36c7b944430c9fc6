from fastapi import APIRouter

from llmchat_chat.api import chat, health, models


def build_router() -> APIRouter:
    router = APIRouter()
    router.include_router(health.router)
    router.include_router(models.router)
    router.include_router(chat.router)
    return router
