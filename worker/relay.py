"""The relay loop: publish outbox events promptly, and pick up deliveries that are due.

It wakes on a nudge (an API process pushes to a Redis list after a commit that wrote
outbox rows, or the in-process API calls `wake`), on a retry coming due, and at least
every `HUB_OUTBOX_SWEEP_SECONDS`. The sweep is what makes nudges optional: a nudge lost
with a Redis restart delays an event by one sweep, and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from redis.asyncio import Redis

from core import deliveries, relay
from core.db import Database
from core.jobs import Keys
from core.models import utcnow
from core.settings import Settings
from core.vault import Vault
from worker.delivery import Dispatcher
from worker.metrics import WorkerMetrics

log = logging.getLogger("worker.relay")
# How long one BLPOP waits before asking again (and noticing a dead connection).
LISTEN_SECONDS = 5.0
# Nudges come with every API commit; due deliveries are looked for at most this often
# on their account (each look is a query).
CLAIM_MIN_SECONDS = 0.1


class OutboxRelay:
    def __init__(
        self,
        *,
        db: Database,
        vault: Vault,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        dispatcher: Dispatcher,
        metrics: WorkerMetrics,
    ) -> None:
        self._db = db
        self._vault = vault
        self._redis = redis
        self._keys = keys
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._sweep = settings.outbox_sweep_seconds
        self._linger = settings.outbox_linger_seconds
        self._batch = settings.outbox_batch_size
        self._lease = settings.webhook_lease_seconds
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        # Due deliveries are looked for at once when one is known to be due (a retry, room
        # freed for an endpoint), else at most every CLAIM_MIN_SECONDS.
        self._claim = True
        self._claimed_at = 0.0

    def wake(self, *, claim: bool = False) -> None:
        """Look now (an in-process nudge); with `claim`, for due deliveries too."""
        self._claim = self._claim or claim
        self._wake.set()

    def _fire(self) -> None:
        self._timer = None
        self.wake(claim=True)

    def wake_at(self, when: datetime) -> None:
        """Look at `when` (a retry coming due) if that is sooner than the next sweep."""
        delay = max(0.0, (when - utcnow()).total_seconds())
        if delay >= self._sweep:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._timer.when() <= loop.time() + delay:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._fire)

    async def run(self) -> None:
        self._wake.set()  # a first pass at once: work may have waited for this worker
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._sweep)
                # Woken by a commit: let the next few commits land too, so a busy API
                # (a group commit every few milliseconds) costs one pass per linger, not
                # one per commit. Wakes meanwhile are answered by this same pass.
                await asyncio.sleep(self._linger)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.pass_once()

    async def pass_once(self) -> None:
        """Publish what is in the outbox, then claim deliveries that are due."""
        dispatcher = self._dispatcher
        try:
            while True:
                batch = await relay.relay_batch(
                    self._db, self._vault, owner=dispatcher.owner, lease_seconds=self._lease,
                    limit=self._batch, accept=dispatcher.accepts,
                )  # fmt: skip
                if batch.events:
                    self._metrics.outbox_relayed.inc(batch.events)
                    dispatcher.submit(batch.leased, batch.targets)
                if batch.events < self._batch:
                    break
            now = asyncio.get_running_loop().time()
            if not self._claim and now - self._claimed_at < min(self._sweep, CLAIM_MIN_SECONDS):
                return
            self._claim, self._claimed_at = False, now
            room = min(dispatcher.capacity(), self._batch)
            if room > 0:
                due = await deliveries.claim_due(
                    self._db, owner=dispatcher.owner, lease_seconds=self._lease, limit=room, exclude=dispatcher.excluded()
                )
                dispatcher.submit(due)
                if len(due) == room:
                    self.wake(claim=True)  # there may be more
        except Exception:  # noqa: BLE001 - the database may be briefly away; the next pass tries again
            self._metrics.relay_errors.inc()
            log.exception("relay pass failed")

    async def listen(self) -> None:
        """Turn Redis nudges into wake-ups; survives Redis going away and coming back."""
        pause = 0.1
        while True:
            try:
                got = await self._redis.blpop([self._keys.outbox_nudge], timeout=LISTEN_SECONDS)
                if got is not None:
                    # The nudges are alike; one pass answers all those sent before it starts.
                    await self._redis.delete(self._keys.outbox_nudge)
                    self._wake.set()
                pause = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - without Redis the sweep carries on alone
                log.debug("waiting for outbox nudges failed: %s", type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._sweep * 5)
