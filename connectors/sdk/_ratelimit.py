"""Client-side pacing: an in-process async token bucket per provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """A connector's declared request budget: ``requests`` per ``per_seconds``, bursting to ``burst``.

    :param requests: requests allowed per window.
    :param per_seconds: the window, in seconds.
    :param burst: bucket size; defaults to ``requests``.
    """

    requests: int
    per_seconds: float = 1.0
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.requests <= 0 or self.per_seconds <= 0:
            raise ValueError("a rate limit needs positive requests and window")


class TokenBucket:
    """An async token bucket: ``await bucket.acquire()`` waits until a request may go.

    Waiters are served in arrival order, so a burst of coroutines cannot starve one.
    In-process only: each hub process paces itself; a provider's server-side limits are
    still honoured through 429 handling.

    :param rate: tokens added per second.
    :param capacity: maximum tokens (the burst).
    :param clock: monotonic clock, injectable for tests.
    :param sleep: async sleep, injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("rate must be positive and capacity at least 1")
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    @classmethod
    def from_limit(
        cls,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> TokenBucket:
        """A bucket pacing to a connector's declared ``RateLimit``."""
        capacity = float(limit.burst or limit.requests)
        return cls(limit.requests / limit.per_seconds, capacity, clock=clock, sleep=sleep)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` are available and take them."""
        if tokens > self.capacity:
            raise ValueError("cannot acquire more tokens than the bucket holds")
        async with self._lock:
            self._refill()
            while self._tokens < tokens:
                await self._sleep((tokens - self._tokens) / self.rate)
                self._refill()
            self._tokens -= tokens
