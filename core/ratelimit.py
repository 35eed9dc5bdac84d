"""Per-tenant rate limits: a token bucket in one Lua script, so every hub process
shares the same buckets and a check is a single atomic round trip.

A bucket refills at `per_minute / 60` tokens a second up to `burst` tokens. The
script reads Redis's own clock, so processes on skewed hosts agree.

Checks made at once go to Redis together, in one call of the script.

If Redis cannot be reached the limiter fails open: requests are served, the
failure is logged and counted, and Redis is not retried for a short pause so a
dead Redis costs no latency per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("hub.ratelimit")

# One bucket per key; ARGV holds (rate per ms, capacity, cost) for each key in turn. Hits
# are applied in order, so a key listed twice is charged twice.
_TOKEN_BUCKETS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[i * 3 - 2])
  local capacity = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
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
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(capacity / rate) + 1000)
  out[#out + 1] = allowed
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = retry_ms
  out[#out + 1] = math.ceil((capacity - tokens) / rate)
end
return out
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


@dataclass(slots=True)
class _Hit:
    key: str
    per_minute: int
    burst: int
    cost: int
    future: asyncio.Future[Decision]


class RateLimiter:
    """Checks against the shared buckets. Checks made while one is on its way to Redis
    go together in the next script call (one round trip for all of them): under load
    the round trips were a tenth of a request's CPU."""

    def __init__(self, redis: Redis, *, on_fail_open: Callable[[], None] | None = None) -> None:
        self._redis = redis
        self._script = redis.register_script(_TOKEN_BUCKETS)
        self._on_fail_open = on_fail_open
        self._paused_until = 0.0
        self._waiting: list[_Hit] = []
        self._sender: asyncio.Task[None] | None = None

    async def hit(self, key: str, *, per_minute: int, burst: int, cost: int = 1) -> Decision:
        if time.monotonic() < self._paused_until:
            return self._fail_open(per_minute)
        hit = _Hit(key, per_minute, burst, cost, asyncio.get_running_loop().create_future())
        self._waiting.append(hit)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        return await hit.future

    async def _send(self) -> None:
        hits: list[_Hit] = []
        try:
            while self._waiting:
                hits, self._waiting = self._waiting, []
                for hit, decision in zip(hits, await self._check(hits), strict=True):
                    if not hit.future.done():  # its request may have gone
                        hit.future.set_result(decision)
        except BaseException as exc:
            # No check is left waiting: cancelled with the sender, or failed as it failed.
            cancelled = isinstance(exc, asyncio.CancelledError)
            for hit in [*hits, *self._waiting]:
                if hit.future.done():
                    continue
                if cancelled:
                    hit.future.cancel()
                else:
                    hit.future.set_exception(exc)
            self._waiting = []
            if cancelled:
                raise
        finally:
            self._sender = None

    async def _check(self, hits: list[_Hit]) -> list[Decision]:
        args: list[float] = []
        for hit in hits:
            args += (hit.per_minute / 60_000, hit.burst, hit.cost)
        try:
            values = await self._script(keys=[f"ratelimit:{hit.key}" for hit in hits], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter unavailable, serving without limits: %s", type(exc).__name__)
            self._paused_until = time.monotonic() + _PAUSE_AFTER_FAILURE_SECONDS
            return [self._fail_open(hit.per_minute) for hit in hits]
        decisions = []
        for i, hit in enumerate(hits):
            allowed, remaining, retry_ms, reset_ms = values[i * 4 : i * 4 + 4]
            decisions.append(
                Decision(
                    allowed=bool(allowed),
                    limit=hit.per_minute,
                    remaining=int(remaining),
                    reset_seconds=math.ceil(int(reset_ms) / 1000),
                    retry_after_seconds=max(1, math.ceil(int(retry_ms) / 1000)) if not allowed else 0,
                )
            )
        return decisions

    def _fail_open(self, per_minute: int) -> Decision:
        if self._on_fail_open is not None:
            self._on_fail_open()
        return Decision(allowed=True, limit=per_minute, remaining=None, reset_seconds=None, failed_open=True)
