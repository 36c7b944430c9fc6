from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmchat_common.projection import ProjectionSettings
from llmchat_common.settings import LogSettings, NatsSettings, PostgresSettings


class HistorySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMCHAT_HISTORY_", env_nested_delimiter="__", extra="ignore"
    )

    # Ask the model for a title after a conversation's first completed answer (else the first
    # words of the first message stay the title).
    titles: bool = True
    # The model that writes titles; None: the conversation's own model.
    title_model: str | None = None
    # A title request's deadline: it runs at background priority, so it may wait behind chats.
    title_timeout_s: float = Field(default=300.0, gt=0)

    # Prometheus metrics on http://<host>:<port>/metrics; 0 turns it off. Loopback by default
    # (the container image opens it on all interfaces).
    prometheus_port: int = Field(default=9465, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"

    # Requests each operation's subscriber handles at once (per replica).
    max_concurrency: int = Field(default=32, ge=1)
    # How long start-up waits for Postgres and NATS before giving up.
    startup_timeout_s: float = Field(default=60.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)
    # Touched every few seconds while serving: a liveness probe for containers (no HTTP port).
    health_file: Path | None = None

    # The eraser's pass over the queue of requests to forget from the event log (it is also
    # woken by each delete).
    erase_interval_s: float = Field(default=5.0, gt=0)
    # Batch lines running at once over all batches (the coordinator publishes more as they end,
    # at background priority), and how often the coordinator looks.
    batch_max_in_flight: int = Field(default=32, ge=1)
    batch_tick_s: float = Field(default=0.5, gt=0)

    projection: ProjectionSettings = Field(default_factory=ProjectionSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
