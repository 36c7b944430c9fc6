"""The edge: FastAPI app factory, lifespan (broker, streams, KV), and the uvicorn entry point."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.middleware.cors import CORSMiddleware

from llmchat_chat.api import build_router, embeddings
from llmchat_chat.api import errors as api_errors
from llmchat_chat.api.limits import BodySizeLimit
from llmchat_chat.api.security import SecurityHeaders
from llmchat_chat.api.web import WebApp
from llmchat_chat.auth import AuthClient, Authenticator, Revocations, TokenVerifier
from llmchat_chat.backends import history_client, usage_client
from llmchat_chat.conversations import ConversationGuard
from llmchat_chat.files import FileStore
from llmchat_chat.jobs import JobDirectory
from llmchat_chat.observability import HttpMetrics, init_metrics, instrument, watch_workers
from llmchat_chat.ratelimit import Limiter
from llmchat_chat.responses import ResponseDirectory
from llmchat_chat.service import ChatService, ModelRegistry
from llmchat_chat.settings import ChatSettings
from llmchat_chat.webhooks import WebhookDispatcher
from llmchat_common.logging import setup_logging
from llmchat_common.messaging import (
    cancels_kv,
    ensure_streams,
    files_store,
    jetstream,
    make_broker,
    nats_client,
    registry_kv,
    revocations_kv,
    served_kv,
)
from llmchat_common.telemetry import (
    flush_telemetry,
    serve_metrics,
    setup_telemetry,
    shutdown_telemetry,
    stop_metrics,
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
        nc = nats_client(broker)
        registry = ModelRegistry(
            await registry_kv(js, settings.nats.replicas),
            settings.models,
            settings.registry_cache_s,
            served=await served_kv(js, settings.nats.replicas),
        )
        service = ChatService(nc, js, registry, await cancels_kv(js, settings.nats.replicas), settings)
        # Short timeouts: a Redis outage must cost milliseconds, not seconds (see ratelimit.py).
        redis = Redis.from_url(
            settings.redis.url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=10
        )
        revocations = Revocations()
        revocations.start(await revocations_kv(js, settings.nats.replicas))
        # Serving before the revocations are known would accept logged-out tokens and
        # disabled users: no start without them.
        await asyncio.wait_for(revocations.loaded.wait(), timeout=settings.startup_timeout_s)
        client = AuthClient(nc, settings.auth_timeout_s)
        verifier = TokenVerifier(client, settings, revocations)
        app.state.service = service
        app.state.authenticator = Authenticator(client, verifier, revocations, redis, settings)
        app.state.limiter = Limiter(redis, settings.limits)
        app.state.history = history_client(nc, settings.history_timeout_s)
        app.state.conversations = ConversationGuard(app.state.history, redis)
        app.state.usage = usage_client(nc, settings.usage_timeout_s)
        app.state.jobs = JobDirectory(service, app.state.usage, redis, settings.jobs.idempotency_ttl_s)
        app.state.responses = ResponseDirectory(service, app.state.jobs, app.state.history)
        app.state.files = FileStore(await files_store(js, settings.nats.replicas), js, settings.files)
        webhooks = WebhookDispatcher(js, settings.webhooks)
        await webhooks.start()
        init_metrics(settings.models)
        metrics_server = serve_metrics(settings.prometheus_host, settings.prometheus_port)
        workers_gauge = asyncio.create_task(watch_workers(registry), name="model-workers")
        try:
            await verifier.refresh(force=True)
        except Exception:  # noqa: BLE001 - auth may start later; the first token refetches
            log.warning("JWKS not available yet")
        log.info("edge ready", extra={"port": settings.port})
        try:
            yield
        finally:
            workers_gauge.cancel()
            await asyncio.to_thread(stop_metrics, metrics_server)
            await webhooks.stop()
            await service.shutdown()
            await revocations.stop()
            await redis.aclose()
            await broker.stop()
            # Before uvicorn re-raises the stopping signal (the process ends there).
            flush_telemetry()

    app = FastAPI(title="llmchat", version="0.1.0", lifespan=lifespan)
    api_errors.install(app)
    # Pure ASGI middleware only (BaseHTTPMiddleware hides client disconnects); the last added
    # runs first.
    # An upload's multipart framing rides on top of the file's own cap (checked while parsed).
    uploads = {"/v1/files": settings.files.max_bytes + 64 * 1024}
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, paths=uploads)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=False,
        allow_methods=["GET", "POST", "PATCH", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
        expose_headers=[
            "X-Request-Id",
            "X-Conversation-Id",
            "Location",
            "Idempotent-Replayed",
            "Content-Disposition",
            "Retry-After",
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "traceparent",
        ],
        max_age=600,
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(HttpMetrics)
    app.include_router(build_router())
    app.include_router(embeddings.router)
    # Last: everything no API route claimed is the web app's.
    app.mount("/", WebApp(settings.web_dir), name="web")
    # Outermost: the server span covers everything above, the metrics and access log included.
    instrument(app)
    return app


def run() -> None:
    settings = ChatSettings()
    setup_logging("chat", settings.log)
    setup_telemetry("chat")
    try:
        _serve(settings)
    finally:
        shutdown_telemetry()


def _serve(settings: ChatSettings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    DrainingServer(config, app, settings.drain_s).run()


class DrainingServer(uvicorn.Server):
    """On SIGTERM, first unready (`/readyz` 503) for `drain_s`, still serving, so that a proxy or
    Kubernetes stops sending new requests here; then uvicorn's own shutdown, which lets the
    requests in flight (streams included) finish. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s
        self._draining: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_s <= 0 or self._draining is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.app.state.draining = True
        log.info("draining", extra={"seconds": self.drain_s})
        self._draining = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        self._draining.daemon = True
        self._draining.start()


if __name__ == "__main__":
    run()
