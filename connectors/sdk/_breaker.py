"""An asyncio circuit breaker built on pybreaker's state machine, with shareable async state.

pybreaker only knows synchronous calls and synchronous storage (its Redis storage blocks
the event loop). Rather than re-implementing the closed/open/half-open rules, each guarded
call here:

1. loads a ``BreakerSnapshot`` from an async ``BreakerStorage`` (memory or Redis);
2. runs pybreaker's own state machine over a journaling storage seeded with that snapshot,
   wrapping the awaited call with ``CircuitBreaker.calling()`` (whose enter/exit are
   synchronous, so the ``await`` happens between them without blocking anything);
3. writes the journal of changes (increments, resets, state flips) back to the storage,
   as increments rather than overwrites so concurrent processes do not lose each other's
   failures.

So every process sharing a Redis storage sees the same breaker per tenant connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar, cast

import pybreaker
from redis.exceptions import RedisError

from ._errors import CircuitOpen, is_outage

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class BreakerSnapshot:
    """The stored state of one breaker.

    :param state: ``closed``, ``open`` or ``half-open``.
    :param failures: consecutive failures counted while closed.
    :param successes: consecutive successes counted while half-open.
    :param opened_at: epoch seconds when the breaker last opened.
    """

    state: str = pybreaker.STATE_CLOSED
    failures: int = 0
    successes: int = 0
    opened_at: float | None = None


@dataclass(frozen=True)
class BreakerChange:
    """One change to a breaker's stored state: set a field, or increment a counter.

    :param field: ``state``, ``failures``, ``successes`` or ``opened_at``.
    :param op: ``set`` or ``incr``.
    :param value: the new value (``set``) or the increment (``incr``).
    """

    field: Literal["state", "failures", "successes", "opened_at"]
    op: Literal["set", "incr"]
    value: str | int | float | None

    def apply(self, snapshot: BreakerSnapshot) -> BreakerSnapshot:
        """``snapshot`` with this change applied."""
        value: Any = self.value
        if self.op == "incr":
            value = getattr(snapshot, self.field) + value
        changes: dict[str, Any] = {self.field: value}
        return replace(snapshot, **changes)


class BreakerStorage(Protocol):
    """Where breaker state lives; shared storage makes all processes agree on a breaker."""

    async def load(self, name: str) -> BreakerSnapshot:
        """The current state of breaker ``name`` (closed and zeroed if unknown)."""
        ...

    async def apply(self, name: str, changes: Sequence[BreakerChange]) -> None:
        """Apply ``changes`` to breaker ``name``, in order."""
        ...


class InMemoryBreakerStorage:
    """Breaker state in this process only (tests, single-process development)."""

    def __init__(self) -> None:
        self._snapshots: dict[str, BreakerSnapshot] = {}

    async def load(self, name: str) -> BreakerSnapshot:
        """The current state of breaker ``name``."""
        return self._snapshots.get(name, BreakerSnapshot())

    async def apply(self, name: str, changes: Sequence[BreakerChange]) -> None:
        """Apply ``changes`` to breaker ``name``."""
        snapshot = self._snapshots.get(name, BreakerSnapshot())
        for change in changes:
            snapshot = change.apply(snapshot)
        self._snapshots[name] = snapshot


class RedisBreakerStorage:
    """Breaker state in Redis (one hash per breaker), shared by every hub process.

    If Redis is unreachable the breaker reads as closed and writes are dropped with a
    warning: losing breaker state must not stop all provider traffic.

    :param redis: a ``redis.asyncio.Redis`` client.
    :param prefix: key namespace; breaker ``name`` is appended (``<prefix>:<name>``).
    :param ttl: seconds a breaker's key lives after its last change.
    """

    def __init__(self, redis: Redis, *, prefix: str = "hub:breaker", ttl: int = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def key(self, name: str) -> str:
        """The Redis key holding breaker ``name``."""
        return f"{self._prefix}:{name}"

    async def load(self, name: str) -> BreakerSnapshot:
        """The current state of breaker ``name``."""
        try:
            # redis-py types hgetall as sync-or-async; the asyncio client's is async.
            raw = await cast(Awaitable[Mapping[Any, Any]], self._redis.hgetall(self.key(name)))
        except RedisError:
            logger.warning("breaker storage unreachable; treating breaker %s as closed", name, exc_info=True)
            return BreakerSnapshot()
        values = {_text(k): _text(v) for k, v in raw.items()}
        return BreakerSnapshot(
            state=values.get("state", pybreaker.STATE_CLOSED),
            failures=int(values.get("failures", 0)),
            successes=int(values.get("successes", 0)),
            opened_at=float(values["opened_at"]) if values.get("opened_at") else None,
        )

    async def apply(self, name: str, changes: Sequence[BreakerChange]) -> None:
        """Apply ``changes`` to breaker ``name`` atomically (one MULTI/EXEC)."""
        if not changes:
            return
        key = self.key(name)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for change in changes:
                    if change.op == "incr":
                        pipe.hincrby(key, change.field, int(change.value or 0))
                    elif change.value is None:
                        pipe.hdel(key, change.field)
                    else:
                        pipe.hset(key, change.field, str(change.value))
                pipe.expire(key, self._ttl)
                await pipe.execute()
        except RedisError:
            logger.warning("breaker storage unreachable; dropped changes to breaker %s", name, exc_info=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Journal(pybreaker.CircuitBreakerStorage):
    """pybreaker storage over a snapshot that records every change it is asked to make."""

    def __init__(self, snapshot: BreakerSnapshot) -> None:
        super().__init__("journal")
        self.snapshot = snapshot
        self.changes: list[BreakerChange] = []

    def _record(self, change: BreakerChange) -> None:
        self.changes.append(change)
        self.snapshot = change.apply(self.snapshot)

    @property
    def state(self) -> str:
        return self.snapshot.state

    @state.setter
    def state(self, state: str) -> None:
        if state != self.snapshot.state:
            self._record(BreakerChange("state", "set", state))

    def increment_counter(self) -> None:
        self._record(BreakerChange("failures", "incr", 1))

    def reset_counter(self) -> None:
        # Always written, even if our snapshot says 0: another process may have counted.
        self._record(BreakerChange("failures", "set", 0))

    def increment_success_counter(self) -> None:
        self._record(BreakerChange("successes", "incr", 1))

    def reset_success_counter(self) -> None:
        self._record(BreakerChange("successes", "set", 0))

    @property
    def counter(self) -> int:
        return self.snapshot.failures

    @property
    def success_counter(self) -> int:
        return self.snapshot.successes

    @property
    def opened_at(self) -> datetime | None:
        at = self.snapshot.opened_at
        return None if at is None else datetime.fromtimestamp(at, UTC)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._record(BreakerChange("opened_at", "set", value.timestamp()))


StateChangeCallback = Callable[[str, str, str], Awaitable[None] | None]


class AsyncCircuitBreaker:
    """A circuit breaker for async calls, one per tenant connection.

    :param name: identifies the breaker in its storage; use ``for_connection`` to build it
        from a tenant and connection id so one tenant's breaker never affects another's.
    :param storage: where the state lives; ``RedisBreakerStorage`` shares it between processes.
        Defaults to a private ``InMemoryBreakerStorage``.
    :param fail_max: consecutive failures that open the breaker.
    :param reset_timeout: seconds the breaker stays open before letting a trial call through.
    :param success_threshold: consecutive successful trial calls that close it again.
    :param is_failure: which exceptions count as failures; by default only outages
        (5xx, timeouts, connection errors), never 401/403/400.
    :param on_state_change: called with ``(name, old_state, new_state)`` when a call of this
        process changes the state (sync or async).
    """

    def __init__(
        self,
        name: str,
        *,
        storage: BreakerStorage | None = None,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        success_threshold: int = 1,
        is_failure: Callable[[BaseException], bool] = is_outage,
        on_state_change: StateChangeCallback | None = None,
    ) -> None:
        self.name = name
        self.storage: BreakerStorage = storage if storage is not None else InMemoryBreakerStorage()
        self.fail_max = fail_max
        self.reset_timeout = reset_timeout
        self.success_threshold = success_threshold
        self._is_failure = is_failure
        self._on_state_change = on_state_change

    @classmethod
    def for_connection(cls, tenant_id: object, connection_id: object, **kwargs: Any) -> AsyncCircuitBreaker:
        """The breaker of one tenant connection, named ``tenant:<id>:connection:<id>``.

        :param kwargs: the other constructor arguments (``storage``, ``fail_max``...).
        """
        return cls(f"tenant:{tenant_id}:connection:{connection_id}", **kwargs)

    async def call(self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``func(*args, **kwargs)`` under the breaker.

        :raises CircuitOpen: the breaker is open and its reset timeout has not passed.
        :raises BaseException: whatever ``func`` raised, after counting it.
        """
        journal = _Journal(await self.storage.load(self.name))
        before = journal.state
        breaker = pybreaker.CircuitBreaker(
            fail_max=self.fail_max,
            reset_timeout=self.reset_timeout,
            success_threshold=self.success_threshold,
            exclude=[self._excluded],
            state_storage=journal,
            name=self.name,
            # Keep the caller's own exception on the failure that trips the breaker.
            throw_new_error_on_trip=False,
        )
        try:
            with breaker.calling():
                result = await func(*args, **kwargs)
        except pybreaker.CircuitBreakerError:
            raise CircuitOpen(
                f"circuit breaker {self.name} is open", retry_after=self._remaining(journal.snapshot)
            ) from None
        except asyncio.CancelledError:
            # A cancelled call proves nothing about the provider: record nothing.
            raise
        except BaseException:
            await self._commit(journal, before)
            raise
        await self._commit(journal, before)
        return result

    def _excluded(self, exc: BaseException) -> bool:
        return not self._is_failure(exc)

    def _remaining(self, snapshot: BreakerSnapshot) -> float | None:
        if snapshot.opened_at is None:
            return None
        return max(0.0, snapshot.opened_at + self.reset_timeout - time.time())

    async def _commit(self, journal: _Journal, before: str) -> None:
        await self.storage.apply(self.name, journal.changes)
        after = journal.state
        if after != before:
            logger.warning("circuit breaker %s: %s -> %s", self.name, before, after)
            if self._on_state_change is not None:
                outcome = self._on_state_change(self.name, before, after)
                if outcome is not None:
                    await outcome

    async def snapshot(self) -> BreakerSnapshot:
        """The breaker's stored state."""
        return await self.storage.load(self.name)

    async def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (as stored; an open breaker whose timeout
        passed reports ``open`` until the next call tries it)."""
        return (await self.snapshot()).state

    async def open(self) -> None:
        """Open the breaker now (e.g. an admin pausing a connection)."""
        await self.storage.apply(
            self.name,
            [BreakerChange("state", "set", pybreaker.STATE_OPEN), BreakerChange("opened_at", "set", time.time())],
        )

    async def reset(self) -> None:
        """Close the breaker and zero its counters (e.g. after an admin fixed the connection)."""
        await self.storage.apply(
            self.name,
            [
                BreakerChange("state", "set", pybreaker.STATE_CLOSED),
                BreakerChange("failures", "set", 0),
                BreakerChange("successes", "set", 0),
                BreakerChange("opened_at", "set", None),
            ],
        )
