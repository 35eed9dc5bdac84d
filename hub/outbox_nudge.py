"""Telling the outbox relay that events were committed, so webhooks leave at once
instead of at the relay's next sweep.

`notify_outbox(state)` is called after a commit that wrote outbox rows. It never waits and
never fails the request: the nudge (one Redis LPUSH, and a direct wake-up of an in-process
worker) goes out in the background, and concurrent nudges coalesce into one in flight
plus at most one after it. If Redis is away the relay's sweep finds the rows anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis

from core import jobs
from core.jobs import Keys

log = logging.getLogger("hub.outbox")


class OutboxNudge:
    def __init__(self, redis: Redis, keys: Keys, *, local: Callable[[], None] | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._local = local
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.failures = 0

    def __call__(self) -> None:
        if self._local is not None:
            self._local()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send())
        else:
            # One is in flight, possibly sent before this commit: send one more after it.
            self._again = True

    async def _send(self) -> None:
        while True:
            self._again = False
            try:
                await jobs.nudge_outbox(self._redis, self._keys)
            except Exception as exc:  # noqa: BLE001 - the relay's sweep picks the rows up anyway
                self.failures += 1
                log.debug("outbox nudge not sent: %s", type(exc).__name__)
                return
            if not self._again:
                return

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def notify_outbox(state: object) -> None:
    """Nudge the relay after a commit that wrote outbox events (cheap; never raises).

    `state` is the app's `HubState`; a state without a nudge (a bare test app) is a no-op."""
    nudge = getattr(state, "outbox_nudge", None)
    if nudge is not None:
        nudge()
