from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmchat_common.settings import LogSettings, NatsSettings


class ChatSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_CHAT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    # Models this deployment serves; requests for them queue even while no worker is live.
    # Any model with a live worker in the registry is served too.
    models: list[str] = Field(default_factory=lambda: ["tiny-random"])

    max_body_bytes: int = 2 * 1024 * 1024
    max_messages: int = 512
    # Request deadline (seconds): default, and the most a caller may ask for with `timeout`.
    default_timeout_s: float = 600.0
    max_timeout_s: float = 3600.0
    # Extra wait past the deadline for the worker's own terminal event before giving up.
    deadline_grace_s: float = 5.0
    registry_cache_s: float = 1.0
    publish_timeout_s: float = 5.0

    nats: NatsSettings = Field(default_factory=NatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
