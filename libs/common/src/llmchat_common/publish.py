"""JetStream publishes that ride out a stream leader election.

When a stream's leader dies, publishes to it go unanswered until the other replicas elect a new
one: measured here with nats-server 2.15.1, 4-7 s after a SIGKILL (a SIGTERM hands the
leadership over in ~0.05 s). Clients see `NoStreamResponseError` (no responders), a timeout, or
a 503 meanwhile. A publish is tried again with the same headers, so the same `Nats-Msg-Id`
(stored once, inside the stream's duplicate window) and the same fencing expectations, until
`window_s` has passed. Any other error (a refused fence, a full log, a message too large) is
raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Longer than a leader election after a crash, with room for the client to notice.
LEADER_ELECTION_S = 12.0
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 2.0


def is_transient(exc: BaseException) -> bool:
    """No leader (yet), or no answer in time: the same publish may succeed a moment later."""
    return isinstance(
        exc,
        NoStreamResponseError
        | ServiceUnavailableError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | TimeoutError,
    )


async def publish_retrying(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    headers: dict[str, str] | None,
    attempt_timeout_s: float,
    window_s: float = LEADER_ELECTION_S,
) -> PubAck:
    """Publish, and again while the error is transient and `window_s` has not passed (0: once).
    A retry waits no longer than what is left of the window (at least 0.5 s)."""
    deadline = time.monotonic() + window_s
    attempts = 0

    async def publish() -> PubAck:
        nonlocal attempts
        attempts += 1
        remaining = deadline - time.monotonic()
        timeout = attempt_timeout_s if attempts == 1 else max(0.5, min(attempt_timeout_s, remaining))
        return await js.publish(subject, payload, headers=headers, timeout=timeout)

    msg_id = (headers or {}).get("Nats-Msg-Id")
    return await retrying(publish, window_s=window_s, what=f"publish to {subject} (message id {msg_id})")


async def retrying(call: Callable[[], Awaitable[T]], *, window_s: float, what: str) -> T:
    """`call()`, again while its error is transient (no leader: a consumer created during an
    election, say) and `window_s` has not passed."""
    deadline = time.monotonic() + window_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay >= deadline:
                raise
            log.warning(f"{what} failed; retrying", extra={"error": repr(exc)})
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
