"""Settings pieces shared by every service; each service composes them into its own settings.

Infrastructure locations use one prefix for all services (`LLMCHAT_NATS_URL`, ...), so a single
environment configures a whole deployment; service-specific settings use the service's prefix.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsSettings(BaseSettings):
    # Validation errors never echo their input: it may hold the password.
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_NATS_", extra="ignore", hide_input_in_errors=True)

    # One server, or a cluster's servers separated by commas (clients fail over between them).
    url: str = "nats://127.0.0.1:4222"
    # Copies of every stream, KV bucket and object store (a cluster: 3, so a node may die).
    # Given when they are first created; an existing one keeps its count.
    replicas: int = Field(default=1, ge=1, le=5)
    # This service's NATS user (each service has its own, with its own subject permissions).
    # The password is a SecretStr: it never shows in a repr, a log line or an error.
    user: str | None = None
    password: SecretStr | None = None
    # Where replies and pull deliveries arrive; a user whose replies are private gets a prefix
    # only it may subscribe to (see the NATS permissions).
    inbox_prefix: str = "_INBOX"
    connect_timeout: int = 5
    # Limits-retention streams; kept long enough to resume and replay.
    requests_max_age_s: float = 7 * 24 * 3600
    events_max_age_s: float = 7 * 24 * 3600
    # Operators' actions are kept longer than the traffic they acted on.
    audit_max_age_s: float = 365 * 24 * 3600
    # Byte limits: a full stream refuses what is new (discard "new"); nothing stored is ever
    # dropped to make room, so a projection that lags never misses an event. The broker
    # reserves the sum of these on its store (nats-server refuses a stream it cannot fit).
    requests_max_bytes: int = 1024**3
    events_max_bytes: int = 4 * 1024**3
    audit_max_bytes: int = 256 * 1024**2
    # Batch-ended notices for webhooks (small; kept as long as the events).
    notices_max_bytes: int = 64 * 1024**2
    # Room kept free in the event stream for the last events of the answers already running:
    # with less, the edge refuses new requests (503 `log_full`) and workers end the running
    # ones (failed, `log_full`), each with a terminal event that still fits.
    events_reserve_bytes: int = 64 * 1024**2
    duplicate_window_s: float = 120.0
    # Storage is "file" everywhere; tests may shrink replicas/limits, never switch to memory.
    max_msg_bytes: int = 8 * 1024 * 1024

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.url.split(",") if url.strip()]

    @model_validator(mode="after")
    def _user_and_password_together(self) -> Self:
        if (self.user is None) != (self.password is None):
            raise ValueError("set both LLMCHAT_NATS_USER and LLMCHAT_NATS_PASSWORD, or neither")
        return self


class PostgresSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_POSTGRES_", extra="ignore")

    dsn: str = "postgresql://llmchat@127.0.0.1:5432/llmchat"
    # A database that does not answer (a hung server, a lost network) must not hang a request
    # or a projection batch: new connections give up after `connect_timeout_s`, a statement
    # after `statement_timeout_s` (enforced by the server, and by the client when the server
    # itself is stalled), and the caller retries or answers 503.
    connect_timeout_s: float = 5.0
    statement_timeout_s: float = 30.0


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_REDIS_", extra="ignore")

    url: str = "redis://127.0.0.1:6379/0"


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_LOG_", extra="ignore")

    level: str = "INFO"
    json_format: bool = Field(default=True, alias="LLMCHAT_LOG_JSON")


class TokenSettings(BaseSettings):
    """What access tokens say about who issued them and for whom: auth signs with these, the
    edge refuses any other."""

    model_config = SettingsConfigDict(env_prefix="LLMCHAT_JWT_", extra="ignore")

    issuer: str = "llmchat-auth"
    audience: str = "llmchat-api"
    # Access-token lifetime; at most a day (the revocation bucket's TTL).
    access_ttl_s: int = Field(default=900, ge=30, le=24 * 3600)
