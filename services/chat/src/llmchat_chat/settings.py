from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmchat_chat.files import FileSettings
from llmchat_chat.webhooks import WebhookSettings
from llmchat_common.settings import LogSettings, NatsSettings, RedisSettings, TokenSettings

# services/chat/web/dist, next to this package's sources (the Docker image sets its own).
WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist"


class Limits(BaseModel):
    """One scope's budget (a user, or one of their API keys)."""

    requests_per_minute: int = Field(default=60, ge=1)
    # Prompt (estimated) + max_tokens reserved at admission, corrected by the real usage.
    tokens_per_minute: int = Field(default=200_000, ge=1)
    concurrent: int = Field(default=8, ge=1)


class RoleLimits(BaseModel):
    user: Limits = Field(default_factory=Limits)
    admin: Limits = Field(
        default_factory=lambda: Limits(requests_per_minute=600, tokens_per_minute=2_000_000, concurrent=64)
    )

    def for_role(self, role: str) -> Limits:
        return self.admin if role == "admin" else self.user


class LimitSettings(BaseModel):
    # Per role; a request counts against its user's budget and, with an API key, the key's.
    # e.g. LLMCHAT_CHAT_LIMITS__USER__USER__CONCURRENT=4, LLMCHAT_CHAT_LIMITS__API_KEY__ADMIN__...
    user: RoleLimits = Field(default_factory=RoleLimits)
    api_key: RoleLimits = Field(default_factory=RoleLimits)
    # Reserved when a request gives no max_tokens (corrected at the end like any reservation).
    default_reserve_tokens: int = Field(default=1024, ge=1)
    # Prompt tokens are estimated before the worker tokenizes: one per this many characters.
    chars_per_token: float = Field(default=3.0, gt=0)
    # Login (and registration) attempts per window, per account and per client address.
    login_per_account: int = Field(default=10, ge=1)
    login_per_address: int = Field(default=50, ge=1)
    login_window_s: int = Field(default=300, ge=1)
    # After a Redis error, limits are kept in this process's memory for this long before Redis
    # is tried again (see the README: the deliberate fail-soft choice).
    redis_retry_s: float = Field(default=2.0, ge=0)


class QueueSettings(BaseModel):
    """Admission control per model (requests waiting for a worker)."""

    # Past this many waiting requests an interactive request gets 503 + Retry-After at once.
    interactive: int = Field(default=64, ge=0)
    # Jobs (`POST /v1/jobs`) may queue deeper.
    jobs: int = Field(default=10_000, ge=0)
    # How often the depth is read from JetStream (in between, this edge counts its own).
    refresh_s: float = Field(default=0.5, ge=0)
    retry_after_s: int = Field(default=5, ge=1)


class JobSettings(BaseModel):
    # An Idempotency-Key is remembered this long (per user).
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    # A comment line on an idle event stream, so proxies and clients see it alive.
    keepalive_s: float = Field(default=15.0, gt=0)


class BatchSettings(BaseModel):
    # Lines one batch may hold; the windows a batch may ask for (OpenAI offers 24h).
    max_lines: int = Field(default=50_000, ge=1)
    windows: dict[str, int] = Field(default_factory=lambda: {"24h": 24 * 3600})


class ChatSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMCHAT_CHAT_", extra="ignore", env_nested_delimiter="__")

    host: str = "127.0.0.1"
    port: int = 8080
    # Prometheus metrics at http://prometheus_host:prometheus_port/metrics (0: off); a port of its
    # own, never the public one.
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = Field(default=9461, ge=0, le=65535)
    # Models this deployment serves; requests for them queue even while no worker is live.
    # Any model with a live worker in the registry is served too.
    models: list[str] = Field(default_factory=lambda: ["tiny-random"])

    # The built web app (`make web`), served at `/`; missing, `/` says how to build it.
    web_dir: Path = Field(default_factory=lambda: WEB_DIST)

    max_body_bytes: int = 2 * 1024 * 1024
    max_messages: int = 512
    max_message_chars: int = 512 * 1024
    # Request deadline (seconds): default, and the most a caller may ask for with `timeout`.
    default_timeout_s: float = 600.0
    max_timeout_s: float = 3600.0
    # Extra wait past the deadline for the worker's own terminal event before giving up.
    deadline_grace_s: float = 5.0
    registry_cache_s: float = 1.0
    publish_timeout_s: float = 5.0
    # A request publish the broker does not confirm (no stream leader: an election takes
    # seconds) is tried again for this long (same message id: stored once), then cancelled,
    # for up to `unconfirmed_cancel_s`, in case a copy was stored after all; the client gets a
    # 503 with Retry-After.
    publish_retry_s: float = Field(default=12.0, ge=0)
    # Idle heartbeat of the ordered consumer that follows a request's events: two missed ones
    # and the client makes the consumer again from the last event it had. The consumer lives on
    # the stream's leader, so a killed leader stops a stream for about twice this plus the
    # election (nats-py's default, 5 s, made that 10 s at least).
    event_heartbeat_s: float = Field(default=1.0, gt=0)
    unconfirmed_cancel_s: float = 120.0
    startup_timeout_s: float = 30.0
    # On SIGTERM, unready (`/readyz` 503) this long before the edge stops taking connections:
    # longer than the proxy's or Kubernetes' readiness period, so no new request is sent to a
    # stopping edge (make cluster: 3 s; 0: stop at once).
    drain_s: float = Field(default=0.0, ge=0)

    # Auth: request-reply timeout to the auth service, the API-key cache in Redis, clock skew
    # allowed on token times, and how often an unknown `kid` may trigger a JWKS refetch.
    auth_timeout_s: float = 5.0
    # Request-reply timeouts to the history and metrics services (conversations, usage).
    history_timeout_s: float = 5.0
    usage_timeout_s: float = 10.0
    api_key_cache_s: int = Field(default=10, ge=1)
    token_leeway_s: int = Field(default=10, ge=0)
    jwks_refetch_min_s: float = 1.0
    # The JWKS is refetched at least this often, whatever the key-change signals said.
    jwks_max_age_s: float = 60.0
    # Shared by every edge of a deployment: authenticates the API-key cache entries in Redis.
    # Unset: a random one per process (each edge then caches for itself).
    cache_secret: SecretStr | None = None
    # Browser origins allowed to call the API (exact matches; `*` is refused).
    cors_origins: list[str] = Field(default_factory=list)
    # Client addresses (proxies) whose X-Forwarded-For is believed; none by default.
    forwarded_allow_ips: str | None = None

    limits: LimitSettings = Field(default_factory=LimitSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @field_validator("cors_origins")
    @classmethod
    def no_wildcard(cls, value: list[str]) -> list[str]:
        if any("*" in origin for origin in value):
            raise ValueError("CORS origins must be listed exactly; `*` is not allowed")
        return value
