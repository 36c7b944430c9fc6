from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmchat_common.settings import LogSettings, NatsSettings


def _default_worker_id() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{socket.gethostname()}-{os.getpid()}")[:64]


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_WORKER_", extra="ignore")

    # A profile alias (profiles/*.yaml), a path to a profile YAML, or a Hugging Face id / local
    # model path served with default settings.
    model: str = "tiny-random"
    # Serve the profile under another alias (e.g. to run a second, independent pool).
    alias: str | None = None
    models_dir: Path = Path(".state/models")
    # The operator's own profiles (`*.yaml`, the built-in ones' shape), beside the built-ins.
    profiles_dir: Path | None = None
    # A model switch: how long running requests may finish before they are released (they
    # continue on another worker of the old model).
    switch_drain_s: float = Field(default=30.0, ge=0)
    worker_id: str = Field(default_factory=_default_worker_id)
    capacity: int | None = Field(default=None, ge=1)
    # `synthetic`: a fixed-rate token source instead of vLLM, so a benchmark measures the
    # pipeline alone (bench/capacity.py). Never for serving: its answers are counting numbers.
    engine: Literal["vllm", "synthetic"] = "vllm"
    synthetic_tokens_per_s: float = Field(default=50.0, gt=0)

    # Delta coalescing: one event per N tokens or per M milliseconds, whichever comes first.
    delta_max_tokens: int = Field(default=8, ge=1)
    delta_max_ms: float = Field(default=10.0, ge=0)
    # Events of all requests are written to NATS together: at most one write per this many
    # milliseconds while busy, at once when quiet (llmchat_worker.publisher). 0: every event.
    publish_linger_ms: float = Field(default=2.0, ge=0)

    ack_wait_s: float = 30.0
    in_progress_interval_s: float = 10.0
    # Worker deaths use up deliveries too; after the last one the request ends `failed`.
    max_deliver: int = 5
    # A request whose attempts died with their workers this many times ends `failed` on its
    # next delivery instead of running again (it may be what kills them). Below max_deliver.
    poison_after_crashes: int = Field(default=3, ge=1)
    # Failover: a redelivered request goes on from the tokens its dead attempt stored. Off:
    # it starts over after a `reset` event (for tests of that path, and as an escape hatch).
    continuation: bool = True
    max_ack_pending: int = 1024
    fetch_timeout_s: float = 1.0
    heartbeat_interval_s: float = 3.0
    drain_timeout_s: float = 60.0

    host: str = "127.0.0.1"
    port: int = 8081
    # Prometheus /metrics (the default registry: the worker's metrics and vLLM's); 0 = off.
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = Field(default=9462, ge=0, le=65535)

    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
