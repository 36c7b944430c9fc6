"""Completion webhooks: a job's result, or a batch as it ended, POSTed to its caller's URL,
signed (Standard Webhooks).

The edge that accepts a job checks its `webhook_url` (`check_webhook_url`); the worker copies it
onto the job's terminal event; the batch coordinator (history) publishes a batch's notice on
LLMCHAT_NOTICES when it ends. Every edge runs a `WebhookDispatcher`: one durable pull consumer
per stream, shared by all replicas (on CHAT_EVENTS filtered to the terminal subjects). An event
without a webhook is acked at once; for the others the job object (`job_body`, from the
terminal event alone) or the Batch object is POSTed and the message acked on a 2xx. A failed
attempt is nak'ed with a growing delay, so the retry waits in JetStream (any replica may make
it), not in this process; after `max_attempts` the delivery is given up with an error in the
log. Deliveries are at least once: receivers deduplicate by `webhook-id`, the request id or
batch id (docs/webhooks.md).

Signing follows the Standard Webhooks spec with plain hmac: `webhook-signature` is
`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under the user's secret, which is derived
from the deployment's master secret so every edge computes it without shared state.

Against SSRF, the URL is checked when the job is submitted and again at delivery, where the host
is resolved and every address must be public (unless `allow_private`); the request then goes to
the checked address itself (Host header and TLS SNI keep the name, so certificates are still
verified against it), so a DNS answer that changes between check and connect cannot redirect it.
Redirects are not followed, proxies from the environment are ignored, and response bodies are
never read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

import httpx
import orjson
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import FetchTimeoutError
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from llmchat_common import subjects
from llmchat_common.batch_contracts import BatchEnded
from llmchat_common.contracts import TERMINAL_TYPES, Cancelled, Completed, Failed, parse_event

log = logging.getLogger(__name__)

# The durable consumer all edges share (a candidate for subjects.py).
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
USER_AGENT = "llmchat-webhooks/1"
# Domain separation: the master secret may sign other things one day.
_DERIVATION_LABEL = b"llmchat webhook signing key v1\x00"
_FETCH_TIMEOUTS = (asyncio.TimeoutError, NatsTimeoutError, FetchTimeoutError)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookSettings(BaseModel):
    """Composed into the edge's settings: `LLMCHAT_CHAT_WEBHOOKS__SECRET=...`."""

    # Shared by every edge of a deployment; unset: webhooks are off (jobs with one are refused).
    secret: SecretStr | None = None
    # Test mode: plain-HTTP receivers.
    allow_http: bool = False
    # Loopback, private, link-local and other non-public targets (off against SSRF).
    allow_private: bool = False
    max_url_chars: int = Field(default=2048, ge=16, le=8192)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # One whole attempt: resolution, connect, TLS, sending the body, the response's headers.
    timeout_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=100)
    # Delay after the n-th failed attempt: min(base * 2**(n-1), max).
    backoff_base_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=3600.0, gt=0)
    max_concurrent: int = Field(default=32, ge=1, le=1024)
    # A message held longer than this is redelivered (to any replica): above `timeout_s`.
    ack_wait_s: float = Field(default=60.0, gt=0)
    max_ack_pending: int = Field(default=10_000, ge=1)
    # Older terminal events are not delivered (a consumer created anew over a week of log).
    max_event_age_s: float = Field(default=24 * 3600.0, gt=0)
    # At shutdown, deliveries in flight get this long before they are handed back.
    stop_grace_s: float = Field(default=5.0, ge=0)
    fetch_wait_s: float = Field(default=5.0, gt=0)
    consumer: str = subjects.WEBHOOKS_CONSUMER

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.secret is not None and len(self.secret.get_secret_value()) < 32:
            raise ValueError("the webhook secret needs at least 32 characters")
        if self.ack_wait_s <= self.timeout_s + 1:
            raise ValueError("ack_wait_s must exceed timeout_s, or deliveries in flight get doubled")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be at least backoff_base_s")
        subjects.check_token(self.consumer)
        return self


# -- signing ---------------------------------------------------------------------------------
def secret_for(user_id: str, settings: WebhookSettings) -> str:
    """The user's signing secret, `whsec_<base64 of 32 bytes>`: HMAC of the user id under the
    master secret, so any edge derives the same one and rotating the master rotates them all."""
    if settings.secret is None:
        raise RuntimeError("webhooks are not enabled (no secret configured)")
    master = settings.secret.get_secret_value().encode()
    key = hmac.new(master, _DERIVATION_LABEL + user_id.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signing_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (one `v1` signature)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def backoff_delay(failed_attempts: int, settings: WebhookSettings) -> float:
    """Seconds before the next attempt after `failed_attempts` (>= 1) failures."""
    exponent = min(max(failed_attempts, 1) - 1, 62)
    return float(min(settings.backoff_base_s * 2.0**exponent, settings.backoff_max_s))


# -- URL and address checks ------------------------------------------------------------------
# RFC 3986 characters only: no spaces, controls, backslashes or non-ASCII, on which URL parsers
# disagree (the check and the client must see the same host).
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_LOCAL_SUFFIXES = ("localhost", "local", "internal", "localdomain", "home.arpa", "lan")


def address_allowed(ip: IPAddress, settings: WebhookSettings) -> bool:
    """Whether a webhook may go to this address: public ones only, unless `allow_private`;
    never the unspecified address or multicast."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address are judged by it.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified or ip.is_multicast:
        return False
    return settings.allow_private or (ip.is_global and not ip.is_reserved)


def _check_hostname(host: str, settings: WebhookSettings) -> None:
    if len(host) > 253:
        raise ValueError("webhook_url: the host name is too long")
    labels = host.rstrip(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError("webhook_url: not a valid host name (use the punycode form of IDNs)")
    # Numeric or hex last labels are IPv4 addresses in disguise (`2130706433`, `0x7f.1`): the
    # resolver would turn them into addresses the literal check never saw.
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        raise ValueError("webhook_url: not a valid host name")
    if settings.allow_private:
        return
    if len(labels) < 2 or host.rstrip(".").endswith(_LOCAL_SUFFIXES):
        raise ValueError("webhook_url: the host must be a public domain name")


def check_webhook_url(url: str, settings: WebhookSettings) -> str:
    """The URL a job's webhook goes to, checked when the job is submitted (and again before
    each delivery); raises ValueError with a message for the caller."""
    if settings.secret is None:
        raise ValueError("webhooks are not enabled on this server")
    if len(url) > settings.max_url_chars:
        raise ValueError(f"webhook_url: longer than {settings.max_url_chars} characters")
    if not _URL_CHARS.match(url):
        raise ValueError("webhook_url: characters outside RFC 3986 (spaces, non-ASCII, ...)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    allowed_schemes = ("https", "http") if settings.allow_http else ("https",)
    if scheme not in allowed_schemes:
        raise ValueError("webhook_url: must be an https URL")
    if "@" in parts.netloc:
        raise ValueError("webhook_url: credentials in the URL are not allowed")
    if parts.fragment or "#" in url:
        raise ValueError("webhook_url: fragments are not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("webhook_url: a host is required")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("webhook_url: invalid port") from exc
    if port == 0:
        raise ValueError("webhook_url: invalid port")
    if "%" in host:
        raise ValueError("webhook_url: IPv6 zone ids are not allowed")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not address_allowed(literal, settings):
            raise ValueError("webhook_url: the address is not a public one")
    else:
        _check_hostname(host, settings)
    # The client parses the URL itself: it must find the same host and port.
    try:
        client_view = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError("webhook_url: not a valid URL") from exc
    if client_view.host.lower() != host or client_view.port not in (port, None):
        raise ValueError("webhook_url: ambiguous URL")
    return url


class TargetRefused(Exception):
    """The webhook's host resolves to an address it may not go to: never retried."""


# A name with many addresses: the first few are tried in turn when a connection fails.
MAX_ADDRESSES = 3


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: the checked addresses, with the name for Host and SNI."""

    urls: list[httpx.URL]
    host_header: str
    sni_hostname: str | None


async def resolve_target(url: str, settings: WebhookSettings) -> Target:
    """Resolves the URL's host now and pins the attempt to its (allowed) addresses."""
    parsed = httpx.URL(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    netloc = parsed.netloc.decode("ascii")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not address_allowed(literal, settings):
            raise TargetRefused(f"{host} is not a public address")
        return Target([parsed], netloc, None)
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
        timeout=settings.connect_timeout_s,
    )
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise OSError(f"no address for {host}")
    # One refused address refuses the host: a name that mixes public and private answers is
    # a rebinding attempt, not a receiver.
    if not all(address_allowed(a, settings) for a in addresses):
        raise TargetRefused(f"{host} resolves to a non-public address")
    urls = [parsed.copy_with(host=str(a)) for a in addresses[:MAX_ADDRESSES]]
    return Target(urls, netloc, host if parsed.scheme == "https" else None)


# -- one delivery attempt --------------------------------------------------------------------
Terminal = Completed | Failed | Cancelled


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    # Not worth retrying: the target is refused, the event cannot be delivered at all.
    permanent: bool = False
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One webhook to POST: its id (`webhook-id`), target, owner (whose secret signs it), body
    and when what it reports happened."""

    msg_id: str
    url: str | None
    user_id: str | None
    body: bytes
    ts: float


def terminal_delivery(event: Terminal) -> Delivery:
    """A job's webhook: the job object of its terminal event."""
    return Delivery(event.request_id, event.webhook_url, event.user_id, delivery_body(event), event.ts)


def batch_delivery(notice: BatchEnded) -> Delivery:
    """A batch's webhook: the Batch object as it ended (its id is the batch's)."""
    from llmchat_chat.api.batches import batch_body

    batch = notice.batch
    return Delivery(batch.id, notice.webhook_url, batch.user_id, orjson.dumps(batch_body(batch)), notice.ts)


def delivery_body(event: Terminal) -> bytes:
    # Imported here: the edge's settings import this module, and the api package imports them.
    from llmchat_chat.api.job_format import job_body

    body = job_body(
        event.request_id,
        model=None,
        conversation_id=None,
        created_at=None,
        started=None,
        terminal=event,
        attempts=event.attempt,
    )
    return orjson.dumps(body)


def make_client(settings: WebhookSettings, *, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """No keep-alive: connections go to pinned addresses, and a pooled TLS connection verified
    for one name must never carry a request for another name on the same address."""
    timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
    limits = httpx.Limits(max_connections=settings.max_concurrent, max_keepalive_connections=0)
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        trust_env=False,
        verify=verify,
    )


async def attempt_delivery(
    client: httpx.AsyncClient, item: Terminal | Delivery, settings: WebhookSettings
) -> Outcome:
    """One signed POST of the job (a terminal event's) or batch to its webhook, within
    `timeout_s` overall."""
    delivery = item if isinstance(item, Delivery) else terminal_delivery(item)
    url = delivery.url
    if url is None:
        return Outcome(delivered=False, permanent=True, error="no webhook")
    if delivery.user_id is None:
        return Outcome(delivered=False, permanent=True, error="no user to sign for")
    try:
        check_webhook_url(url, settings)
    except ValueError as exc:
        return Outcome(delivered=False, permanent=True, error=str(exc))
    body = delivery.body
    secret = secret_for(delivery.user_id, settings)
    try:
        async with asyncio.timeout(settings.timeout_s):
            target = await resolve_target(url, settings)
            headers = signed_headers(secret, delivery.msg_id, int(time.time()), body)
            headers["host"] = target.host_header
            status = await _post(client, target, body, headers)
    except TargetRefused as exc:
        return Outcome(delivered=False, permanent=True, error=str(exc))
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        return Outcome(delivered=False, error=type(exc).__name__)
    if 200 <= status < 300:
        return Outcome(delivered=True, status=status)
    return Outcome(delivered=False, status=status, error=f"HTTP {status}")


async def _post(client: httpx.AsyncClient, target: Target, body: bytes, headers: dict[str, str]) -> int:
    # SNI and certificate verification use the name, the connection the pinned address.
    ext = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
    failure: httpx.ConnectError | None = None
    for url in target.urls:
        try:
            # Streamed and never read: only the status line matters, and a receiver must not
            # be able to make the edge buffer a large answer.
            async with client.stream("POST", url, content=body, headers=headers, extensions=ext) as resp:
                return resp.status_code
        except httpx.ConnectError as exc:
            failure = exc
    assert failure is not None
    raise failure


# -- the dispatcher --------------------------------------------------------------------------
@dataclass
class DispatchStats:
    delivered: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    # Terminal events without a webhook, acked at once.
    skipped: int = 0


def terminal_filters() -> list[str]:
    return [f"{subjects.EVENTS_PREFIX}.*.{t}" for t in sorted(TERMINAL_TYPES)]


def _of_terminal(data: bytes) -> Delivery | None:
    event = parse_event(data)
    if not isinstance(event, Completed | Failed | Cancelled) or not event.webhook_url:
        return None
    return terminal_delivery(event)


def _of_notice(data: bytes) -> Delivery | None:
    return batch_delivery(BatchEnded.model_validate_json(data))


@dataclass(frozen=True)
class Source:
    """A stream the dispatcher delivers from: its filters, and what a message asks (None:
    nothing to deliver; raises: unreadable)."""

    stream: str
    filters: list[str]
    parse: Callable[[bytes], Delivery | None]


SOURCES = (
    Source(subjects.EVENTS_STREAM, terminal_filters(), _of_terminal),
    Source(subjects.NOTICES_STREAM, [subjects.notices_wildcard()], _of_notice),
)


class WebhookDispatcher:
    """Delivers the webhooks of terminal events (jobs) and batch-ended notices, each from its
    stream's shared durable consumer; started and stopped with the edge."""

    def __init__(
        self, js: JetStreamContext, settings: WebhookSettings, *, verify: ssl.SSLContext | bool = True
    ) -> None:
        self._js = js
        self._settings = settings
        # TLS verification of receivers; tests pass a context trusting their own CA.
        self._verify = verify
        self._client: httpx.AsyncClient | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.stats = DispatchStats()

    async def start(self) -> None:
        """Returns at once: the consumer is created (and retried) in the background, so a
        broker hiccup or a permissions mistake never keeps the edge from serving."""
        if self._settings.secret is None:
            log.info("webhooks disabled: no secret configured")
            return
        self._client = make_client(self._settings, verify=self._verify)
        self._loop_task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        if self._loop_task is not None:
            await cancel_until_done(self._loop_task)
            self._loop_task = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self._settings.stop_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _ensure_consumer(self, source: Source) -> JetStreamContext.PullSubscription:
        s = self._settings
        config = ConsumerConfig(
            durable_name=s.consumer,
            filter_subjects=source.filters,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait_s,
            max_ack_pending=s.max_ack_pending,
            # Attempts are counted here (num_delivered), so changing max_attempts needs no
            # consumer update and a crash-looping delivery still ends.
            max_deliver=-1,
        )
        await self._js.add_consumer(source.stream, config)
        return await self._js.pull_subscribe_bind(durable=s.consumer, stream=source.stream)

    async def _run(self) -> None:
        await asyncio.gather(*(self._run_source(source) for source in SOURCES))

    async def _run_source(self, source: Source) -> None:
        delay = 0.5
        while True:
            try:
                psub = await self._ensure_consumer(source)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; the edge serves meanwhile
                log.error("webhook consumer unavailable; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.info(
            "webhook dispatcher running", extra={"consumer": self._settings.consumer, "stream": source.stream}
        )
        try:
            while True:
                free = self._settings.max_concurrent - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await psub.fetch(free, timeout=self._settings.fetch_wait_s)
                except _FETCH_TIMEOUTS:
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS away: the loop waits for it
                    log.warning("webhook fetch failed", extra={"error": repr(exc)})
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    await self._dispatch(msg, source)
        finally:
            # nats-py 2.16: a pull subscription left open stalls the connection's drain.
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _dispatch(self, msg: Msg, source: Source) -> None:
        try:
            delivery = source.parse(msg.data)
        except (ValidationError, ValueError) as exc:
            log.error("unreadable webhook message skipped", extra={"error": type(exc).__name__})
            await _settle(msg.term())
            return
        if delivery is None:
            self.stats.skipped += 1
            await _settle(msg.ack())
            return
        if time.time() - delivery.ts > self._settings.max_event_age_s:
            log.warning("webhook too old to deliver; dropped", extra={"request_id": delivery.msg_id})
            self.stats.given_up += 1
            await _settle(msg.term())
            return
        task = asyncio.create_task(self._deliver(msg, delivery), name=f"webhook-{delivery.msg_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _deliver(self, msg: Msg, delivery: Delivery) -> None:
        assert self._client is not None
        s = self._settings
        attempt = msg.metadata.num_delivered
        fields = {"request_id": delivery.msg_id, "attempt": attempt, "host": _host_of(delivery.url)}
        if attempt > s.max_attempts:
            # Redelivered past the limit without a verdict (edges crashed mid-attempt).
            log.error("webhook given up: attempts exhausted", extra=fields)
            self.stats.given_up += 1
            await _settle(msg.term())
            return
        try:
            outcome = await attempt_delivery(self._client, delivery, s)
        except asyncio.CancelledError:
            # Shutdown: hand it back at once for another replica (at least once).
            await _settle(msg.nak())
            raise
        except Exception as exc:
            log.exception("webhook attempt crashed", extra=fields)
            outcome = Outcome(delivered=False, error=type(exc).__name__)
        fields.update(status=outcome.status, error=outcome.error)
        if outcome.delivered:
            self.stats.delivered += 1
            log.info("webhook delivered", extra=fields)
            await _settle(msg.ack())
            return
        self.stats.failed_attempts += 1
        if outcome.permanent or attempt >= s.max_attempts:
            self.stats.given_up += 1
            log.error("webhook given up", extra=fields)
            await _settle(msg.term())
            return
        delay = backoff_delay(attempt, s)
        log.warning("webhook attempt failed; will retry", extra={**fields, "retry_in_s": delay})
        await _settle(msg.nak(delay=delay))


async def _settle(call: Awaitable[None]) -> None:
    """An ack/nak/term; if NATS is away the message is redelivered after ack_wait instead."""
    try:
        await call
    except Exception as exc:  # noqa: BLE001
        log.warning("webhook ack failed", extra={"error": repr(exc)})


def _host_of(url: str | None) -> str | None:
    """Logs name the host only: a URL's path and query may hold the receiver's own tokens."""
    if url is None:
        return None
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


async def cancel_until_done(task: asyncio.Task[None], every_s: float = 1.0) -> None:
    """Cancels `task` until it has ended. Python 3.11's `asyncio.wait_for` (inside nats-py's
    fetch) can swallow a cancellation that lands as its timeout fires, and the loop would then
    run on, so a single cancel could leave `stop` waiting for ever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every_s)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
