"""Per-user and per-API-key limits in Redis: requests and tokens per minute (fixed one-minute
windows) and concurrent requests; plus throttles for login attempts.

Admission is one Lua script: every scope is checked, and only if all pass is anything counted,
so a refused request costs nothing. Tokens are reserved at admission (estimated prompt +
max_tokens) and corrected with the real usage at the end; a concurrency slot is held until the
request ends or its deadline passes (an edge that dies cannot leak slots).

Redis unreachable (deliberate, documented in the README): limits keep working from this
process's memory with the same rules, so each edge enforces them on its own until Redis is back
(Redis is retried every `redis_retry_s`). Nothing is refused only because Redis is down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from llmchat_chat.errors import RateLimited
from llmchat_chat.settings import Limits, LimitSettings

log = logging.getLogger(__name__)

WINDOW_S = 60

ADMIT = """
local now, ttl, rid = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local reserve, hold, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local seen = {}
for i = 1, n do
  local rpm, tpm, conc = tonumber(ARGV[4 + 3 * i]), tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  local r = tonumber(redis.call('GET', KEYS[3 * i - 2]) or '0')
  local t = tonumber(redis.call('GET', KEYS[3 * i - 1]) or '0')
  redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now)
  local c = redis.call('ZCARD', KEYS[3 * i])
  if r + 1 > rpm then return {0, i, 'requests', r, t} end
  if t + reserve > tpm then return {0, i, 'tokens', r, t} end
  if c + 1 > conc then return {0, i, 'concurrent', r, t} end
  seen[#seen + 1] = r
  seen[#seen + 1] = t
end
for i = 1, n do
  redis.call('INCR', KEYS[3 * i - 2])
  redis.call('EXPIRE', KEYS[3 * i - 2], ttl)
  redis.call('INCRBY', KEYS[3 * i - 1], reserve)
  redis.call('EXPIRE', KEYS[3 * i - 1], ttl)
  redis.call('ZADD', KEYS[3 * i], hold, rid)
  redis.call('EXPIRE', KEYS[3 * i], math.ceil(hold - now) + ttl)
end
return {1, 0, '', unpack(seen)}
"""

RELEASE = """
local delta = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  redis.call('ZREM', KEYS[2 * i], ARGV[1])
  if delta ~= 0 and redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    if redis.call('INCRBY', KEYS[2 * i - 1], delta) < 0 then
      redis.call('SET', KEYS[2 * i - 1], 0, 'KEEPTTL')
    end
  end
end
return 1
"""

HIT = """
local v = redis.call('INCR', KEYS[1])
if v == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {v, redis.call('TTL', KEYS[1])}
"""


@dataclass(frozen=True)
class Scope:
    """A budget owner: `user:<id>` or `key:<id>`."""

    name: str
    limits: Limits


@dataclass
class Admission:
    request_id: str
    scopes: list[Scope]
    window: int
    reserved: int
    headers: dict[str, str]
    # Set from the request's terminal event; None keeps the whole reservation.
    used_tokens: int | None = None
    released: bool = False
    # Where it was counted: released there, whatever Redis's state is meanwhile.
    in_redis: bool = True


def _keys(scope: Scope, window: int) -> tuple[str, str, str]:
    base = f"rl:{scope.name}"
    return f"{base}:req:{window}", f"{base}:tok:{window}", f"{base}:conc"


def _reset_in(now: float, window: int) -> int:
    return max(1, math.ceil((window + 1) * WINDOW_S - now))


def _ratelimit_headers(req: tuple[int, int], tok: tuple[int, int], reset_s: int) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from (remaining, limit) pairs."""
    return {
        "x-ratelimit-limit-requests": str(req[1]),
        "x-ratelimit-remaining-requests": str(max(0, req[0])),
        "x-ratelimit-reset-requests": f"{reset_s}s",
        "x-ratelimit-limit-tokens": str(tok[1]),
        "x-ratelimit-remaining-tokens": str(max(0, tok[0])),
        "x-ratelimit-reset-tokens": f"{reset_s}s",
    }


def _headers(scopes: list[Scope], seen: list[int], reserve: int, reset_s: int) -> dict[str, str]:
    """An admitted request's headers, for the tightest scope, this request counted."""
    req = min(
        (s.limits.requests_per_minute - r - 1, s.limits.requests_per_minute)
        for s, r in zip(scopes, seen[0::2], strict=True)
    )
    tok = min(
        (s.limits.tokens_per_minute - t - reserve, s.limits.tokens_per_minute)
        for s, t in zip(scopes, seen[1::2], strict=True)
    )
    return _ratelimit_headers(req, tok, reset_s)


def _refusal(scope: Scope, which: str, reset_s: int, reserve: int, used: tuple[int, int]) -> RateLimited:
    """A 429 with Retry-After and the refusing scope's x-ratelimit-* headers (nothing was
    counted, so `remaining` is what is left now; scopes after the refusing one were not read).
    `used` is that scope's (requests, tokens) in the current window."""
    limits = scope.limits
    headers = _ratelimit_headers(
        (limits.requests_per_minute - used[0], limits.requests_per_minute),
        (limits.tokens_per_minute - used[1], limits.tokens_per_minute),
        reset_s,
    )
    owner = "API key" if scope.name.startswith("key:") else "account"
    if which == "requests":
        message = f"rate limit reached: {limits.requests_per_minute} requests per minute for this {owner}"
    elif which == "tokens":
        message = (
            f"rate limit reached: {limits.tokens_per_minute} tokens per minute for this {owner} "
            f"(this request reserves {reserve})"
        )
    else:
        message = f"too many concurrent requests: at most {limits.concurrent} for this {owner}"
        reset_s = 1  # a slot frees when a request ends; the x-ratelimit-reset-* keep the window's
    error = RateLimited(message, headers={"Retry-After": str(reset_s), **headers})
    error.type = which
    return error


@dataclass
class _MemoryStore:
    """The same rules in this process's memory, used while Redis is unreachable."""

    counters: dict[str, tuple[int, float]] = field(default_factory=dict)
    slots: dict[str, dict[str, float]] = field(default_factory=dict)

    def get(self, key: str, now: float) -> int:
        value, expires = self.counters.get(key, (0, 0.0))
        return value if expires > now else 0

    def incr(self, key: str, by: int, now: float, ttl: float) -> int:
        value = max(0, self.get(key, now) + by)  # as in Redis: a correction never goes below 0
        expires = self.counters.get(key, (0, 0.0))[1]
        self.counters[key] = (value, expires if expires > now else now + ttl)
        return value

    def live_slots(self, key: str, now: float) -> dict[str, float]:
        slots = self.slots.setdefault(key, {})
        for rid in [rid for rid, until in slots.items() if until <= now]:
            del slots[rid]
        return slots

    def prune(self, now: float) -> None:
        if len(self.counters) > 10_000:
            self.counters = {k: v for k, v in self.counters.items() if v[1] > now}


class Limiter:
    def __init__(self, redis: Redis, settings: LimitSettings) -> None:
        self._redis = redis
        self.settings = settings
        self._admit = redis.register_script(ADMIT)
        self._release = redis.register_script(RELEASE)
        self._hit = redis.register_script(HIT)
        self._memory = _MemoryStore()
        self._redis_down_until = 0.0

    def scopes(self, user_id: str, role: str, api_key_id: str | None) -> list[Scope]:
        scopes = [Scope(f"user:{user_id}", self.settings.user.for_role(role))]
        if api_key_id is not None:
            scopes.append(Scope(f"key:{api_key_id}", self.settings.api_key.for_role(role)))
        return scopes

    def _use_redis(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: Exception) -> None:
        if self._use_redis():
            log.warning("redis unreachable: limits enforced in memory", extra={"error": repr(exc)})
        self._redis_down_until = time.monotonic() + self.settings.redis_retry_s

    async def admit(self, scopes: list[Scope], request_id: str, reserve: int, hold_until: float) -> Admission:
        now = time.time()
        window = int(now // WINDOW_S)
        result: list[Any] | None = None
        if self._use_redis():
            keys = [k for scope in scopes for k in _keys(scope, window)]
            args: list[Any] = [now, 2 * WINDOW_S, request_id, reserve, hold_until, len(scopes)]
            for scope in scopes:
                limits = scope.limits
                args += [limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent]
            try:
                result = list(await self._admit(keys=keys, args=args))
            except RedisError as exc:
                self._redis_failed(exc)
        in_redis = result is not None
        if result is None:
            result = self._admit_in_memory(scopes, window, request_id, reserve, hold_until, now)
        reset_s = _reset_in(now, window)
        if int(result[0]) != 1:
            which = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
            used = (int(result[3]), int(result[4]))
            raise _refusal(scopes[int(result[1]) - 1], which, reset_s, reserve, used)
        headers = _headers(scopes, [int(v) for v in result[3:]], reserve, reset_s)
        return Admission(request_id, scopes, window, reserve, headers, in_redis=in_redis)

    def _admit_in_memory(
        self, scopes: list[Scope], window: int, rid: str, reserve: int, hold: float, now: float
    ) -> list[Any]:
        mem = self._memory
        mem.prune(now)
        seen: list[int] = []
        for i, scope in enumerate(scopes, start=1):
            rk, tk, ck = _keys(scope, window)
            r, t, slots = mem.get(rk, now), mem.get(tk, now), mem.live_slots(ck, now)
            if r + 1 > scope.limits.requests_per_minute:
                return [0, i, "requests", r, t]
            if t + reserve > scope.limits.tokens_per_minute:
                return [0, i, "tokens", r, t]
            if len(slots) + 1 > scope.limits.concurrent:
                return [0, i, "concurrent", r, t]
            seen += [r, t]
        for scope in scopes:
            rk, tk, ck = _keys(scope, window)
            mem.incr(rk, 1, now, 2 * WINDOW_S)
            mem.incr(tk, reserve, now, 2 * WINDOW_S)
            mem.live_slots(ck, now)[rid] = hold
        return [1, 0, "", *seen]

    async def release(self, admission: Admission) -> None:
        """Frees the concurrency slot; corrects the reservation when the real usage is known."""
        if admission.released:
            return
        admission.released = True
        used = admission.used_tokens
        delta = 0 if used is None else used - admission.reserved
        keys = [k for scope in admission.scopes for k in _keys(scope, admission.window)[1:]]
        if admission.in_redis:
            try:
                await self._release(keys=keys, args=[admission.request_id, delta])
            except RedisError as exc:
                # The slot frees itself at the request's deadline; the budget keeps the reservation.
                self._redis_failed(exc)
            return
        now = time.time()
        for tok_key, conc_key in zip(keys[0::2], keys[1::2], strict=True):
            self._memory.live_slots(conc_key, now).pop(admission.request_id, None)
            if delta and self._memory.get(tok_key, now):
                self._memory.incr(tok_key, delta, now, 2 * WINDOW_S)

    async def throttle(self, key: str, limit: int, window_s: int, what: str) -> None:
        """Counts one attempt against `key`; over `limit` in `window_s`: 429."""
        full_key = f"rl:throttle:{key}"
        count, ttl = 0, window_s
        if self._use_redis():
            try:
                count, ttl = (int(v) for v in await self._hit(keys=[full_key], args=[window_s]))
            except RedisError as exc:
                self._redis_failed(exc)
                count = 0
        if count == 0:
            now = time.time()
            count = self._memory.incr(full_key, 1, now, window_s)
            ttl = math.ceil(self._memory.counters[full_key][1] - now)
        if count > limit:
            retry = str(max(1, ttl))
            raise RateLimited(f"too many {what}; try again in {retry} s", headers={"Retry-After": retry})
