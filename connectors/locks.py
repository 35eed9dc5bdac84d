"""A lock every hub process shares, in Redis: so that only one process at a time refreshes a
connection's OAuth token.

Providers that rotate refresh tokens accept each one once. Two processes refreshing the
same connection at once (the API's `/check` and a worker's sync, say) would present the
same refresh token twice, and the second grant's `invalid_grant` would mark a healthy
connection AUTH_ERROR. Under the lock, the second process finds the token the first one
stored and uses it instead of refreshing again.

The lock expires on its own (`ttl_seconds`), so a process that dies holding it blocks the
others that long at most. Redis being unreachable, or a holder outstaying `wait_seconds`,
lets the caller go ahead unlocked: a refresh is never refused for want of the lock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Deleted only by the holder that set it (its token), never by one that lost it to expiry.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock:
    """Named locks shared by every process using `redis`.

    :param ttl_seconds: how long a holder keeps the lock at most: its work must fit (a token
        request on the hosts' shared client may take ~100 s at worst: 10 s to connect, 30 s
        each to wait for the pool, write and read).
    :param wait_seconds: how long to wait for a held lock before going ahead without it.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "hub:lock:",
        ttl_seconds: float = 120.0,
        wait_seconds: float = 120.0,
        poll_seconds: float = 0.05,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = int(ttl_seconds * 1000)
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self._release = redis.register_script(_RELEASE)

    @asynccontextmanager
    async def held(self, name: str) -> AsyncIterator[bool]:
        """Hold the lock `name` for the block; yields whether it was got (False: going
        ahead without it, see the module's docstring)."""
        key, token = self.prefix + name, secrets.token_hex(16)
        got = await self._acquire(key, token)
        try:
            yield got
        finally:
            if got:
                try:
                    await self._release(keys=[key], args=[token])
                except RedisError as exc:  # it expires on its own
                    logger.warning("could not release lock %s: %s", name, type(exc).__name__)

    async def _acquire(self, key: str, token: str) -> bool:
        deadline = time.monotonic() + self.wait_seconds
        try:
            while not await self.redis.set(key, token, nx=True, px=self.ttl_ms):
                if time.monotonic() >= deadline:
                    logger.warning("lock %s still held after %.0f s; going ahead without it", key, self.wait_seconds)
                    return False
                await asyncio.sleep(self.poll_seconds)
        except RedisError as exc:
            logger.warning("lock %s unavailable (%s); going ahead without it", key, type(exc).__name__)
            return False
        return True
