"""The edge: FastAPI app factory, lifespan (broker, streams, KV), and the uvicorn entry point."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from llmchat_chat.api import build_router
from llmchat_chat.api import errors as api_errors
from llmchat_chat.api.limits import BodySizeLimit
from llmchat_chat.service import ChatService, ModelRegistry
from llmchat_chat.settings import ChatSettings
from llmchat_common.logging import setup_logging
from llmchat_common.messaging import (
    cancels_kv,
    ensure_streams,
    jetstream,
    make_broker,
    nats_client,
    registry_kv,
)

log = logging.getLogger(__name__)


def create_app(settings: ChatSettings | None = None) -> FastAPI:
    settings = settings or ChatSettings()
    broker = make_broker(settings.nats, name="chat-edge")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.start()
        js = jetstream(broker)
        await ensure_streams(js, settings.nats)
        registry = ModelRegistry(await registry_kv(js), settings.models, settings.registry_cache_s)
        service = ChatService(nats_client(broker), js, registry, await cancels_kv(js), settings)
        app.state.service = service
        log.info("edge ready", extra={"port": settings.port})
        try:
            yield
        finally:
            await service.shutdown()
            await broker.stop()

    app = FastAPI(title="llmchat", version="0.1.0", lifespan=lifespan)
    api_errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(build_router())
    return app


def run() -> None:
    settings = ChatSettings()
    setup_logging("chat", settings.log)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    run()
