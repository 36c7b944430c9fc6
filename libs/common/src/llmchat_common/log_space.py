"""A full log: the streams have byte limits and refuse what is new once full (messaging.py).

- A publish into a full stream fails with JetStream's error 10077 ("maximum bytes exceeded"):
  nothing was stored, so it is a clear refusal, not an unconfirmed publish.
- The event stream keeps a reserve (`events_reserve_bytes`): once less than that is free, the
  edge refuses new requests and workers end the running ones, each with a terminal event that
  still fits, so no answer is left without an outcome. `LogSpace` tells when that is, from the
  stream's info, read at most every `refresh_s`.
"""

from __future__ import annotations

import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import Gauge

log = logging.getLogger(__name__)

STREAM_BYTES = Gauge("llmchat_stream_bytes", "Bytes stored in a stream (as last read)", ["stream"])
STREAM_MAX_BYTES = Gauge("llmchat_stream_max_bytes", "A stream's byte limit (-1: none)", ["stream"])

# JetStream's error code for a publish refused by a stream's byte limit (discard "new").
STREAM_FULL = 10077


def is_log_full(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.err_code == STREAM_FULL


class LogSpace:
    """Whether a stream has less than `reserve_bytes` left under its byte limit."""

    def __init__(self, js: JetStreamContext, stream: str, reserve_bytes: int, refresh_s: float = 1.0) -> None:
        self._js = js
        self._stream = stream
        self._reserve = reserve_bytes
        self._refresh_s = refresh_s
        self._low = False
        self._read_at = float("-inf")

    async def low(self) -> bool:
        now = time.monotonic()
        if now - self._read_at >= self._refresh_s:
            self._read_at = now
            try:
                info = await self._js.stream_info(self._stream)
            except Exception as exc:  # noqa: BLE001 - unknown keeps the last answer; a publish still fails when full
                log.warning("stream info unavailable", extra={"stream": self._stream, "error": repr(exc)})
                return self._low
            limit = info.config.max_bytes or -1
            STREAM_BYTES.labels(self._stream).set(info.state.bytes)
            STREAM_MAX_BYTES.labels(self._stream).set(limit)
            low = limit > 0 and limit - info.state.bytes < self._reserve
            if low != self._low:
                log.warning(
                    "event log nearly full" if low else "event log has room again",
                    extra={"stream": self._stream, "bytes": info.state.bytes, "max_bytes": limit},
                )
            self._low = low
        return self._low
