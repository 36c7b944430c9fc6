"""Worker process: engine + JetStream consumer, with /healthz and /readyz over HTTP.

Exit codes: 0 after a clean drain (SIGTERM), 1 when the engine died (in-flight requests are
nak'ed or left un-acked, so JetStream redelivers them to another worker).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Response

from llmchat_common.logging import configure_vllm_logging, install_task_dump, setup_logging
from llmchat_common.messaging import ensure_streams, jetstream, make_broker
from llmchat_common.telemetry import serve_metrics, setup_telemetry, shutdown_telemetry, stop_metrics
from llmchat_worker.advisories import register_handlers
from llmchat_worker.embedding_engine import EmbeddingEngine
from llmchat_worker.engine import VllmEngine
from llmchat_worker.handlers import RequestConsumer
from llmchat_worker.logs import JsonLines
from llmchat_worker.profiles import ModelProfile, load_profile
from llmchat_worker.service import ServingEngine
from llmchat_worker.settings import WorkerSettings
from llmchat_worker.switching import ModelHost
from llmchat_worker.synthetic import SyntheticEngine

log = logging.getLogger(__name__)
SERVICE = "inference-worker"


@dataclass
class WorkerState:
    fatal: bool = False
    host: ModelHost | None = None
    # The process's own run (not an app in a test): once stopped, it must exit within this.
    exit_grace_s: float | None = None

    @property
    def consumer(self) -> RequestConsumer | None:
        return None if self.host is None else self.host.consumer


# Once the drain is done and the engine stopped, the process has this long to exit. Seen once
# under the cluster's rolling restart: a worker that logged its shutdown complete and never
# exited (a thread of the default executor that did not return), so its supervisor never
# started it again. Its requests were already handed back: nothing is lost by ending it.
EXIT_GRACE_S = 20.0


def exit_within(seconds: float, state: WorkerState) -> None:
    def force() -> None:
        log.error("shutdown did not finish; exiting now (threads below)", extra={"seconds": seconds})
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1 if state.fatal else 0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def make_engine(settings: WorkerSettings, profile: ModelProfile) -> ServingEngine:
    if settings.engine == "synthetic":
        log.warning(
            "synthetic token source: answers are counting numbers (benchmarks only)",
            extra={"tokens_per_s": settings.synthetic_tokens_per_s},
        )
        return SyntheticEngine(profile, settings.synthetic_tokens_per_s)
    if profile.kind == "embedding":
        return EmbeddingEngine(profile, settings.models_dir)
    return VllmEngine(profile, settings.models_dir)


def create_app(settings: WorkerSettings | None = None, state: WorkerState | None = None) -> FastAPI:
    settings = settings or WorkerSettings()
    state = state or WorkerState()
    profile = load_profile(settings.model, settings.alias, settings.profiles_dir)
    broker = make_broker(settings.nats, name=f"worker-{settings.worker_id}")
    register_handlers(broker, lambda: state.consumer)
    host = ModelHost(settings, broker, profile, make_engine, lambda: app.state.fatal())
    host.register()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_task_dump()
        # Bound at once, not after the engine's ~30 s start: a port chosen free by whoever
        # started us could be taken meanwhile (vLLM's metrics join the registry when it starts).
        metrics_server = serve_metrics(settings.prometheus_host, settings.prometheus_port)
        try:
            await host.load()
            await broker.start()
            await ensure_streams(jetstream(broker), settings.nats)
            await host.start()
            state.host = host
            yield
            await host.stop()
        finally:
            await broker.stop()
            log.info("broker stopped")
            if host.engine is not None:
                host.engine.shutdown()
            log.info("engine stopped")
            await asyncio.to_thread(stop_metrics, metrics_server)
            if state.exit_grace_s is not None:
                exit_within(state.exit_grace_s, state)

    app = FastAPI(title="llmchat inference worker", lifespan=lifespan)
    app.state.worker = state
    app.state.fatal = lambda: None

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        consumer = state.consumer
        ready = consumer is not None and consumer.ready and not state.fatal
        response.status_code = 200 if ready else 503
        return {"ready": ready}

    @app.get("/status")
    async def status() -> dict[str, object]:
        consumer = state.consumer
        if consumer is None:
            return {"ready": False}
        return {"ready": consumer.ready, **consumer.info().model_dump(), "tracked": len(consumer.runners)}

    return app


def run() -> None:
    settings = WorkerSettings()
    # What the engine's processes and native libraries write goes out as JSON lines too.
    stdio = JsonLines(SERVICE).start() if settings.log.json_format else None
    setup_logging(SERVICE, settings.log)
    # vLLM's own loggers (in each of its processes) write the same JSON lines.
    configure_vllm_logging(SERVICE, settings.log)
    # Before the engine starts: vLLM's request spans go through this process's provider.
    setup_telemetry(SERVICE)
    state = WorkerState(exit_grace_s=EXIT_GRACE_S)
    app = create_app(settings, state)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, lifespan="on")
    )
    # The HTTP port is bound now; uvicorn would bind it only after the lifespan (the engine's
    # start), and a port chosen free by whoever started us could be taken meanwhile.
    listening = socket.create_server((settings.host, settings.port))

    def fatal() -> None:
        state.fatal = True
        server.should_exit = True

    app.state.fatal = fatal
    # uvicorn re-raises the signal that stopped it once it has shut down; by then the drain is
    # done, so the re-raised signal is ignored and the exit code says how it went.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        asyncio.run(server.serve(sockets=[listening]))
    finally:
        shutdown_telemetry()
        if stdio is not None:
            stdio.stop()
    if state.fatal or not server.started:
        sys.exit(1)


if __name__ == "__main__":
    run()
