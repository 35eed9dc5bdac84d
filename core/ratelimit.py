"""Per-tenant rate limits: a token bucket in one Lua script, so every hub process
shares the same buckets and a check is a single atomic round trip.

A bucket refills at `per_minute / 60` tokens a second up to `burst` tokens. The
script reads Redis's own clock, so processes on skewed hosts agree.

If Redis cannot be reached the limiter fails open: requests are served, the
failure is logged and counted, and Redis is not retried for a short pause so a
dead Redis costs no latency per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("hub.ratelimit")

_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry_ms = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_ms = math.ceil((cost - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return {allowed, math.floor(tokens), retry_ms, math.ceil((capacity - tokens) / rate)}
"""
_PAUSE_AFTER_FAILURE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int | None
    reset_seconds: int | None
    retry_after_seconds: int = 0
    failed_open: bool = False


class RateLimiter:
    def __init__(self, redis: Redis, *, on_fail_open: Callable[[], None] | None = None) -> None:
        self._redis = redis
        self._script = redis.register_script(_TOKEN_BUCKET)
        self._on_fail_open = on_fail_open
        self._paused_until = 0.0

    async def hit(self, key: str, *, per_minute: int, burst: int, cost: int = 1) -> Decision:
        if time.monotonic() < self._paused_until:
            return self._fail_open(per_minute)
        rate_per_ms = per_minute / 60_000
        try:
            allowed, remaining, retry_ms, reset_ms = await self._script(
                keys=[f"ratelimit:{key}"], args=[rate_per_ms, burst, cost]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter unavailable, serving without limits: %s", type(exc).__name__)
            self._paused_until = time.monotonic() + _PAUSE_AFTER_FAILURE_SECONDS
            return self._fail_open(per_minute)
        return Decision(
            allowed=bool(allowed),
            limit=per_minute,
            remaining=int(remaining),
            reset_seconds=math.ceil(int(reset_ms) / 1000),
            retry_after_seconds=max(1, math.ceil(int(retry_ms) / 1000)) if not allowed else 0,
        )

    def _fail_open(self, per_minute: int) -> Decision:
        if self._on_fail_open is not None:
            self._on_fail_open()
        return Decision(allowed=True, limit=per_minute, remaining=None, reset_seconds=None, failed_open=True)
