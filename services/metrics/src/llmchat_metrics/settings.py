from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmchat_common.projection import ProjectionSettings
from llmchat_common.settings import LogSettings, NatsSettings, PostgresSettings


class MetricsSettings(BaseSettings):
    # Nested with `__`: LLMCHAT_METRICS_PROJECTION__BATCH_SIZE=1000.
    model_config = SettingsConfigDict(
        env_prefix="LLMCHAT_METRICS_", extra="ignore", env_nested_delimiter="__"
    )

    # Prometheus metrics (business, consumers, RPC) on http://<host>:<port>/metrics; 0 turns it
    # off. Loopback by default (the container image opens it on all interfaces).
    prometheus_port: int = Field(default=9464, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"
    # How often the metrics snapshot is re-read from usage.daily.
    snapshot_interval_s: float = Field(default=5.0, gt=0)

    # Requests each operation's subscriber handles at once (per replica).
    max_concurrency: int = Field(default=16, ge=1)
    # How long start-up waits for Postgres and NATS before giving up.
    startup_timeout_s: float = Field(default=60.0, gt=0)
    db_pool_size: int = Field(default=5, ge=1)
    # The consumer loop is restarted after an unexpected error, waiting this long at most.
    consumer_restart_max_s: float = Field(default=30.0, gt=0)
    # Touched every few seconds while serving: a liveness probe for containers.
    health_file: Path | None = None

    projection: ProjectionSettings = Field(default_factory=ProjectionSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
