"""Webhook delivery: signed POSTs per Standard Webhooks, a lane per endpoint, results
written in batches.

Each request carries `webhook-id` (the event id: the same on every attempt and replay),
`webhook-timestamp` (integer seconds of this attempt) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per signing secret, separated by
spaces). The body is the event envelope.

How a response is read (one table, used for every attempt):

    2xx                         success
    410                         failure; the delivery stops and the endpoint is disabled
    429, 502, 503, 504          failure, retried no sooner than its Retry-After
    3xx (never followed), other failure, retried on the schedule
    timeout, connection error   failure, retried on the schedule
    refused address             failure, retried (DNS may change), never sent

Each endpoint has at most `HUB_WEBHOOK_ENDPOINT_CONCURRENCY` requests in flight, so a slow
or failing endpoint holds only its own lanes, never another endpoint's.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from connectors.sdk import parse_retry_after
from core import addresses, deliveries, webhooks
from core.db import Database
from core.deliveries import AttemptResult, Due, RetryPolicy, Target
from core.models import utcnow
from core.settings import Settings
from core.vault import Vault
from core.webhooks import SECRET_PREFIX
from worker.metrics import WorkerMetrics
from worker.tasks import cancel_all

log = logging.getLogger("worker.delivery")
USER_AGENT = "deal-hub-webhooks/1"
RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})
# Endpoint URLs and secrets are re-read this often (a rotation or a disable shows within it).
TARGET_TTL_SECONDS = 2.0
# How many deliveries a worker holds for one endpoint (more stay in the database, to be
# claimed when there is room): what the endpoint takes in a quarter of a lease at the pace
# it has shown, within these bounds per lane; an endpoint not yet timed gets the upper one.
QUEUE_PER_LANE_MIN = 4
QUEUE_PER_LANE_MAX = 256
# Deliveries a worker holds in all, per request it may have in flight.
BACKLOG_PER_SLOT = 40


class _Pace:
    """Attempts an endpoint completes per second, measured over windows of a second or more."""

    __slots__ = ("count", "per_second", "since")

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.count = 0
        self.per_second: float | None = None

    def completed(self) -> None:
        self.count += 1
        elapsed = time.monotonic() - self.since
        if elapsed >= 1.0:
            self.per_second = self.count / elapsed
            self.since, self.count = time.monotonic(), 0


# Attempt results are written in batches of up to RESULT_BATCH, gathered for up to
# RESULT_LINGER_SECONDS after the first: a write has a fixed cost (a transaction of four
# statements, each a round trip to aiosqlite's thread or the server) that small batches
# paid per few results. A delivery is marked delivered that much later; a worker that
# dies in the meantime sends it again.
RESULT_BATCH = 500
RESULT_LINGER_SECONDS = 0.2
# A write of results that fails is tried again this often before the batch is given up
# (its deliveries' leases then lapse and they are attempted again: at least once).
RECORD_TRIES = 5


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str
    honour_retry_after: bool = False
    gone: bool = False


_SUCCESS = Verdict(deliveries.SUCCESS)
_GONE = Verdict(deliveries.HTTP_ERROR, gone=True)
_RETRY_AFTER = Verdict(deliveries.HTTP_ERROR, honour_retry_after=True)
_FAILURE = Verdict(deliveries.HTTP_ERROR)


def classify(status: int) -> Verdict:
    """What an HTTP status means for a delivery (the table in the module docstring)."""
    if 200 <= status < 300:
        return _SUCCESS
    if status == 410:
        return _GONE
    return _RETRY_AFTER if status in RETRY_AFTER_STATUSES else _FAILURE


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses a host if any of its addresses
    is not public. aiohttp connects only to the addresses returned here (and caches
    them), so what was checked is what is reached."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            addresses.check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(slots=True)
class _Prepared:
    target: Target
    url: URL
    # Why this URL may not be reached, when its host is an address literal (names are
    # checked by the resolver at connection time).
    refused: str | None
    loaded_at: float
    # The signing secrets' HMAC keys, decoded once rather than per request.
    keys: tuple[bytes, ...]


def _prepare(target: Target, allow_private: bool) -> _Prepared:
    url = URL(target.url)
    refused = None
    literal = addresses.ip_literal(url.host or "")
    if literal is not None and not allow_private:
        reason = addresses.refusal(literal)
        refused = None if reason is None else f"{literal} is a {reason} address"
    keys = tuple(base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True) for secret in target.secrets)
    return _Prepared(target, url, refused, time.monotonic(), keys)


def signature(keys: tuple[bytes, ...], msg_id: str, timestamp: int, body: bytes) -> str:
    """`webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` per key,
    separated by spaces (what `connectors.sdk.sign_webhook` gives for each secret)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode() for key in keys)


class _Deadlines:
    """Request time limits, enforced by one timer for all requests: a request is given up
    between `seconds` and `seconds + tick` after it started (a timer per request was a
    visible share of a request's cost)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._tick = min(1.0, max(0.01, seconds / 10))
        self.running: dict[asyncio.Timeout, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._expire_forever(), name="webhook-deadlines")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])

    def track(self, timeout: asyncio.Timeout) -> None:
        """Give up the block of `timeout` (an entered `asyncio.timeout(None)`) when its time is up."""
        self.running[timeout] = asyncio.get_running_loop().time() + self.seconds

    async def _expire_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for timeout, deadline in list(self.running.items()):
                if deadline <= now:
                    timeout.reschedule(now)


class Dispatcher:
    def __init__(
        self,
        *,
        db: Database,
        vault: Vault,
        settings: Settings,
        metrics: WorkerMetrics,
        owner: str,
        wake_at: Callable[[datetime], None] = lambda when: None,
        on_room: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._vault = vault
        self._settings = settings
        self._metrics = metrics
        self.owner = owner
        self._wake_at = wake_at
        self._on_room = on_room
        self.policy = RetryPolicy(
            tuple(settings.webhook_retry_schedule), settings.webhook_retry_jitter, settings.webhook_retry_after_max_seconds
        )
        self._lanes_max = settings.webhook_endpoint_concurrency
        self._max_backlog = max(1000, settings.webhook_max_in_flight * BACKLOG_PER_SLOT)
        self._queue_min = self._lanes_max * QUEUE_PER_LANE_MIN
        self._queue_max = min(self._lanes_max * QUEUE_PER_LANE_MAX, self._max_backlog // 2)
        self._paces: dict[str, _Pace] = {}
        self._saturated: set[str] = set()
        # Endpoints whose signing secrets this worker cannot open: left to other workers
        # until this process restarts (its keyring, read at start, is what lacks the key).
        self._unreadable: set[str] = set()
        self._timeout = settings.webhook_timeout_seconds
        self._deadlines = _Deadlines(self._timeout)
        self._excerpt_bytes = settings.webhook_response_excerpt_bytes
        self._queues: dict[str, deque[tuple[Due, float]]] = {}
        self._lanes: dict[str, int] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._targets: dict[str, _Prepared] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(settings.webhook_max_in_flight)
        self._results: list[AttemptResult] = []
        self._results_ready = asyncio.Event()
        self._backlog = 0
        self._session: aiohttp.ClientSession | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        # Set once no request is in flight any more: the flusher ends when it has written all.
        self._sent_all = False
        self._in_flight = 0
        # Read when scraped, not updated per request.
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.backlog.set_function(lambda: self._backlog)
        self._attempts = {o: metrics.attempts.labels(o) for o in deliveries.OUTCOMES}

    # --- lifecycle

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.webhook_max_in_flight,
            limit_per_host=0,
            resolver=GuardedResolver(allow_private=self._settings.webhooks_allow_private),
            ttl_dns_cache=10,
        )
        self._deadlines.start()
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Requests are timed by `_deadlines` (connecting included).
            timeout=aiohttp.ClientTimeout(total=None),
            # Endpoints of different tenants share this session: no cookie may travel between them.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
        )
        self._flusher = asyncio.create_task(self._flush_forever(), name="webhook-results")

    async def stop(self, grace_seconds: float) -> None:
        """Finish what is in flight (up to `grace_seconds`), write its results, stop."""
        self._closing = True
        if self._lane_tasks:
            _, pending = await asyncio.wait(self._lane_tasks, timeout=grace_seconds)
            await cancel_all(pending)
        self._sent_all = True
        if self._flusher is not None:
            # The flusher writes what is left (a batch it is writing now included), then ends.
            self._results_ready.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), grace_seconds)
            except (TimeoutError, Exception):  # noqa: BLE001 - shutting down; leases lapse and retries follow
                log.warning("webhook results not written at shutdown; those deliveries will be attempted again")
            await cancel_all([self._flusher])
        try:
            await asyncio.wait_for(deliveries.release(self._db, self.owner), grace_seconds)
        except Exception:  # noqa: BLE001 - the leases lapse on their own
            log.warning("could not release leased webhook deliveries at shutdown; they wait for their leases")
        if self._session is not None:
            await self._session.close()
        await self._deadlines.stop()

    # --- intake

    @property
    def backlog(self) -> int:
        return self._backlog

    def capacity(self) -> int:
        return 0 if self._closing else max(0, self._max_backlog - self._backlog)

    def _queue_limit(self, endpoint_id: str) -> int:
        pace = self._paces.get(endpoint_id)
        if pace is None or pace.per_second is None:
            return self._queue_max
        wanted = int(pace.per_second * self._settings.webhook_lease_seconds / 4)
        return max(self._queue_min, min(self._queue_max, wanted))

    def accepts(self, endpoint_id: str) -> bool:
        """Whether to take one more delivery for `endpoint_id` now."""
        if self._closing or self._backlog >= self._max_backlog or endpoint_id in self._unreadable:
            return False
        queue = self._queues.get(endpoint_id)
        if queue is None or len(queue) < self._queue_limit(endpoint_id):
            return True
        self._saturated.add(endpoint_id)
        return False

    def excluded(self) -> list[str]:
        """Endpoints not to claim deliveries of now: their queues are full, or this worker
        cannot sign for them."""
        full = [e for e, queue in self._queues.items() if len(queue) >= self._queue_limit(e)]
        return [*full, *self._unreadable]

    def submit(self, items: list[Due], targets: dict[str, Target] | None = None) -> None:
        """Take claimed deliveries (leased to this worker just now) and start sending them."""
        now = time.monotonic()
        for target in (targets or {}).values():
            self._keep(target)
        # Sent only while the lease still covers a whole request; after that it is another worker's.
        deadline = now + self._settings.webhook_lease_seconds - self._timeout
        for item in items:
            self._queues.setdefault(item.endpoint_id, deque()).append((item, deadline))
            self._backlog += 1
        for endpoint_id in {item.endpoint_id for item in items}:
            while self._lanes.get(endpoint_id, 0) < self._lanes_max and len(self._queues.get(endpoint_id, ())) > self._lanes.get(endpoint_id, 0):
                self._lanes[endpoint_id] = self._lanes.get(endpoint_id, 0) + 1
                task = asyncio.create_task(self._lane(endpoint_id))
                self._lane_tasks.add(task)
                task.add_done_callback(self._lane_tasks.discard)

    async def _lane(self, endpoint_id: str) -> None:
        queue = self._queues[endpoint_id]
        pace = self._paces.get(endpoint_id)
        if pace is None:
            pace = self._paces[endpoint_id] = _Pace()
        try:
            while queue and not self._closing:
                item, deadline = queue.popleft()
                try:
                    if time.monotonic() < deadline and await self._deliver(item, deadline):
                        pace.completed()
                except Exception:  # noqa: BLE001 - one delivery's bug must not stop the lane; its lease lapses
                    log.exception("delivery failed unexpectedly", extra={"delivery_id": item.id})
                finally:
                    self._backlog -= 1
                if endpoint_id in self._saturated and len(queue) < self._queue_limit(endpoint_id) // 2:
                    # Deliveries left in the database for want of room can be claimed now.
                    self._saturated.discard(endpoint_id)
                    self._on_room()
        finally:
            self._lanes[endpoint_id] -= 1
            if not self._lanes[endpoint_id]:
                del self._lanes[endpoint_id]
                if not queue:
                    self._queues.pop(endpoint_id, None)

    async def _target(self, endpoint_id: str) -> _Prepared | None:
        prepared = self._targets.get(endpoint_id)
        if prepared is not None and time.monotonic() - prepared.loaded_at < TARGET_TTL_SECONDS:
            return prepared
        # One reload per endpoint, however many of its lanes ask at once.
        async with self._loading.setdefault(endpoint_id, asyncio.Lock()):
            prepared = self._targets.get(endpoint_id)
            if prepared is not None and time.monotonic() - prepared.loaded_at < TARGET_TTL_SECONDS:
                return prepared
            target = (await deliveries.load_targets(self._db, self._vault, [endpoint_id])).get(endpoint_id)
            if target is None:
                self._targets.pop(endpoint_id, None)
                return None
            return self._keep(target)

    def _keep(self, target: Target) -> _Prepared:
        before = self._targets.get(target.endpoint_id)
        if target.readable:
            self._unreadable.discard(target.endpoint_id)
        else:
            self._unreadable.add(target.endpoint_id)
        if not target.readable and (before is None or before.target.readable):
            log.error(
                "cannot open a webhook endpoint's signing secret (sealed under a vault key this worker lacks); "
                "its deliveries wait for a worker that can",
                extra={"endpoint_id": target.endpoint_id, "tenant_id": target.tenant_id},
            )
        prepared = self._targets[target.endpoint_id] = _prepare(target, self._settings.webhooks_allow_private)
        return prepared

    # --- one attempt

    async def _deliver(self, item: Due, deadline: float) -> bool:
        """Make one attempt; False when none was made (the lease would not cover it, the
        endpoint is gone, or its secret cannot be opened here): the lease then lapses and
        the delivery is claimed again, by a worker that can."""
        prepared = self._targets.get(item.endpoint_id)
        if prepared is None or time.monotonic() - prepared.loaded_at >= TARGET_TTL_SECONDS:
            prepared = await self._target(item.endpoint_id)
            if prepared is None:
                return False  # the endpoint was deleted, and its deliveries with it
        if not prepared.target.readable:
            # Not an attempt: the lease lapses and a worker holding the key sends it.
            self._metrics.secrets_unreadable.inc()
            return False
        if not prepared.target.enabled:
            self._push(AttemptResult(item, utcnow(), 0.0, deliveries.ENDPOINT_DISABLED, error="The endpoint is disabled"))
            return True
        if prepared.refused is not None:
            self._push(AttemptResult(item, utcnow(), 0.0, deliveries.ADDRESS_REFUSED, error=prepared.refused))
            return True
        assert self._session is not None
        status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        retry_after: str | None = None
        outcome = deliveries.CONNECTION_ERROR
        running = self._deadlines.running
        async with self._slots:
            # Waiting for a slot (every one busy with slow endpoints) may outlast the lease.
            if time.monotonic() >= deadline:
                return False
            started_at = utcnow()
            if item.total_attempts == 0:
                self._metrics.lag.observe(max(0.0, (started_at - item.event_created_at).total_seconds()))
            timestamp = int(time.time())
            headers = {
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
                "webhook-id": item.event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature(prepared.keys, item.event_id, timestamp, item.body),
            }
            self._in_flight += 1
            began = time.perf_counter()
            try:
                async with asyncio.timeout(None) as limit:
                    self._deadlines.track(limit)
                    try:
                        async with self._session.post(prepared.url, data=item.body, headers=headers, allow_redirects=False) as response:
                            status = response.status
                            retry_after = response.headers.get("Retry-After")
                            excerpt = await self._excerpt(response)
                    finally:
                        del running[limit]
            except TimeoutError:
                outcome, error = deliveries.TIMEOUT, f"No response within {self._timeout:g} s"
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, addresses.AddressRefused):
                    outcome, error = deliveries.ADDRESS_REFUSED, str(exc.os_error)
                else:
                    error = f"Could not connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
            except (aiohttp.ClientError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                self._in_flight -= 1
        seconds = time.perf_counter() - began
        self._metrics.attempt_duration.observe(seconds)
        result = AttemptResult(item, started_at, seconds * 1000, outcome, status_code=status, error=error, excerpt=excerpt)
        if status is not None:
            verdict = classify(status)
            result.outcome, result.gone = verdict.outcome, verdict.gone
            if verdict.outcome != deliveries.SUCCESS:
                result.error = f"HTTP {status}"
            if verdict.honour_retry_after:
                result.retry_after = parse_retry_after(retry_after)
        self._push(result)
        return True

    async def _excerpt(self, response: aiohttp.ClientResponse) -> str | None:
        limit = self._excerpt_bytes
        length = response.content_length
        if length is not None and length <= max(limit, 65536):
            raw = await response.read()  # read it all, so the connection is kept alive
        else:
            raw = await response.content.read(limit)
        if not raw or not limit:
            return None
        # PostgreSQL text holds no NUL.
        return raw[:limit].decode("utf-8", "replace").replace("\x00", "")

    # --- results

    def _push(self, result: AttemptResult) -> None:
        self._attempts[result.outcome].inc()
        self._results.append(result)
        if len(self._results) == 1 or len(self._results) >= RESULT_BATCH:
            self._results_ready.set()

    async def _flush_forever(self) -> None:
        while not (self._sent_all and not self._results):
            await self._results_ready.wait()
            self._results_ready.clear()
            # Rows written in larger batches cost a fraction as much each: let a batch
            # gather for a moment (the requests are made already; only the log waits).
            if len(self._results) < RESULT_BATCH and not self._closing:
                try:
                    await asyncio.wait_for(self._results_ready.wait(), RESULT_LINGER_SECONDS)
                except TimeoutError:
                    pass
                self._results_ready.clear()
            await self._drain_results()

    async def _drain_results(self) -> None:
        # Written as a group: while one batch is written, the next gathers.
        while self._results:
            batch, self._results = self._results[:RESULT_BATCH], self._results[RESULT_BATCH:]
            await self._record(batch)

    async def _record(self, batch: list[AttemptResult]) -> None:
        for attempt in range(1, RECORD_TRIES + 1):
            try:
                recorded = await deliveries.record(
                    self._db, batch, owner=self.owner, policy=self.policy,
                    disable_after_seconds=self._settings.webhook_disable_after_seconds,
                )  # fmt: skip
                break
            except Exception:  # noqa: BLE001 - the database may be briefly away; try again, then let leases lapse
                log.exception("writing webhook results failed", extra={"attempt": attempt, "results": len(batch)})
                if attempt == RECORD_TRIES:
                    return
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        self._metrics.deliveries.labels(deliveries.SUCCEEDED).inc(recorded.succeeded)
        self._metrics.deliveries.labels(deliveries.FAILED).inc(recorded.failed)
        self._metrics.retries.inc(recorded.retrying)
        if recorded.stale:
            self._metrics.results_stale.inc(recorded.stale)
            log.warning("webhook results dropped: their leases had lapsed and been claimed again", extra={"results": recorded.stale})
        if recorded.next_retry_at is not None:
            self._wake_at(recorded.next_retry_at)
        for tenant_id, endpoint_id, reason, detail in dict.fromkeys(recorded.disable):
            try:
                if await webhooks.disable_by_system(self._db, tenant_id, endpoint_id, reason=reason, detail=detail):
                    self._metrics.endpoints_disabled.labels(reason).inc()
                    log.warning("webhook endpoint disabled", extra={"endpoint_id": endpoint_id, "tenant_id": tenant_id, "reason": reason})
            except Exception:  # noqa: BLE001 - the periodic check disables it later
                log.exception("disabling a webhook endpoint failed", extra={"endpoint_id": endpoint_id})
            self._targets.pop(endpoint_id, None)
