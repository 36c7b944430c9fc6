from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmchat_common.settings import LogSettings, NatsSettings, PostgresSettings, TokenSettings

# OWASP Password Storage Cheat Sheet, Argon2id minimum: m=19 MiB, t=2, p=1. Weaker settings
# are refused at start rather than silently accepted.
ARGON2_MIN_MEMORY_KIB = 19 * 1024
ARGON2_MIN_TIME_COST = 2


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_AUTH_", extra="ignore")

    open_registration: bool = True
    refresh_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    min_password_length: int = Field(default=12, ge=8, le=256)

    argon2_memory_kib: int = Field(default=19456, ge=ARGON2_MIN_MEMORY_KIB)
    argon2_time_cost: int = Field(default=2, ge=ARGON2_MIN_TIME_COST)
    # Hashing runs in threads next to the event loop; more lanes would only contend for cores.
    argon2_parallelism: int = Field(default=1, ge=1, le=1)

    # Prometheus metrics on http://<host>:<port>/metrics; 0 turns it off. Loopback by default
    # (the container image opens it on all interfaces).
    prometheus_port: int = Field(default=9463, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"

    # Requests each operation's subscriber handles at once (per replica).
    max_concurrency: int = Field(default=32, ge=1)
    # Signing keys are read from the database (the CLI rotates them from another process) and
    # cached this long.
    key_cache_s: float = Field(default=2.0, ge=0, le=10)
    # How long start-up waits for Postgres and NATS before giving up.
    startup_timeout_s: float = Field(default=60.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)
    # Touched every few seconds while serving: a liveness probe for containers (no HTTP port).
    health_file: Path | None = None

    tokens: TokenSettings = Field(default_factory=TokenSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
