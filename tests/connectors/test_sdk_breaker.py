"""AsyncCircuitBreaker over pybreaker: async failures, half-open trials, storage, Redis sharing."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from connectors.sdk import (
    AsyncCircuitBreaker,
    AuthError,
    BreakerChange,
    BreakerSnapshot,
    CircuitOpen,
    InMemoryBreakerStorage,
    ProviderUnavailable,
    RedisBreakerStorage,
)


async def fail(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


async def succeed(value: str = "ok") -> str:
    await asyncio.sleep(0)
    return value


async def test_async_failures_open_the_breaker_and_then_calls_fail_fast() -> None:
    breaker = AsyncCircuitBreaker("t:c", fail_max=3)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):  # the caller's own error, also on the tripping call
            await breaker.call(fail, ProviderUnavailable("down"))
    assert await breaker.state() == "open"
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    with pytest.raises(CircuitOpen, match="t:c is open"):
        await breaker.call(counted)
    assert calls == 0


async def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = AsyncCircuitBreaker("t:c", fail_max=3)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await breaker.call(fail, ProviderUnavailable("down"))
    assert (await breaker.snapshot()).failures == 2
    assert await breaker.call(succeed) == "ok"
    assert (await breaker.snapshot()).failures == 0
    with pytest.raises(ProviderUnavailable):
        await breaker.call(fail, ProviderUnavailable("down"))
    assert await breaker.state() == "closed"


async def test_non_outages_are_not_failures() -> None:
    breaker = AsyncCircuitBreaker("t:c", fail_max=1)
    for exc in (AuthError("401"), KeyError("bug"), ValueError("bad input")):
        with pytest.raises(type(exc)):
            await breaker.call(fail, exc)
    assert await breaker.state() == "closed"
    with pytest.raises(httpx.ConnectError):
        await breaker.call(fail, httpx.ConnectError("refused"))
    assert await breaker.state() == "open"


async def test_a_custom_failure_test() -> None:
    breaker = AsyncCircuitBreaker("t:c", fail_max=1, is_failure=lambda exc: isinstance(exc, KeyError))
    with pytest.raises(KeyError):
        await breaker.call(fail, KeyError("x"))
    assert await breaker.state() == "open"


async def test_after_the_reset_timeout_a_successful_trial_closes_it() -> None:
    storage = InMemoryBreakerStorage()
    breaker = AsyncCircuitBreaker("t:c", storage=storage, fail_max=1, reset_timeout=30)
    with pytest.raises(ProviderUnavailable):
        await breaker.call(fail, ProviderUnavailable("down"))
    with pytest.raises(CircuitOpen) as caught:
        await breaker.call(succeed)
    assert caught.value.retry_after == pytest.approx(30, abs=1)
    # Pretend the timeout passed.
    await storage.apply("t:c", [BreakerChange("opened_at", "set", time.time() - 31)])
    assert await breaker.call(succeed) == "ok"
    snapshot = await breaker.snapshot()
    assert (snapshot.state, snapshot.failures, snapshot.successes) == ("closed", 0, 0)


async def test_a_failed_trial_reopens_it() -> None:
    storage = InMemoryBreakerStorage()
    breaker = AsyncCircuitBreaker("t:c", storage=storage, fail_max=1, reset_timeout=30)
    with pytest.raises(ProviderUnavailable):
        await breaker.call(fail, ProviderUnavailable("down"))
    await storage.apply("t:c", [BreakerChange("opened_at", "set", time.time() - 31)])
    with pytest.raises(ProviderUnavailable):
        await breaker.call(fail, ProviderUnavailable("still down"))
    snapshot = await breaker.snapshot()
    assert snapshot.state == "open" and snapshot.opened_at is not None
    assert snapshot.opened_at > time.time() - 5


async def test_success_threshold_needs_several_trials() -> None:
    storage = InMemoryBreakerStorage()
    breaker = AsyncCircuitBreaker("t:c", storage=storage, fail_max=1, success_threshold=2)
    with pytest.raises(ProviderUnavailable):
        await breaker.call(fail, ProviderUnavailable("down"))
    await storage.apply("t:c", [BreakerChange("opened_at", "set", time.time() - 3600)])
    await breaker.call(succeed)
    assert await breaker.state() == "half-open"
    await breaker.call(succeed)
    assert await breaker.state() == "closed"


async def test_cancellation_is_not_counted() -> None:
    breaker = AsyncCircuitBreaker("t:c", fail_max=1)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await breaker.snapshot() == BreakerSnapshot()


async def test_state_changes_are_reported() -> None:
    changes: list[tuple[str, str, str]] = []

    async def on_change(name: str, old: str, new: str) -> None:
        changes.append((name, old, new))

    breaker = AsyncCircuitBreaker("t:c", fail_max=1, on_state_change=on_change)
    with pytest.raises(ProviderUnavailable):
        await breaker.call(fail, ProviderUnavailable("down"))
    assert changes == [("t:c", "closed", "open")]


async def test_manual_open_and_reset() -> None:
    breaker = AsyncCircuitBreaker.for_connection("t1", "c1")
    assert breaker.name == "tenant:t1:connection:c1"
    await breaker.open()
    with pytest.raises(CircuitOpen):
        await breaker.call(succeed)
    await breaker.reset()
    assert await breaker.call(succeed) == "ok"


async def test_concurrent_failures_all_count() -> None:
    breaker = AsyncCircuitBreaker("t:c", fail_max=10)
    results = await asyncio.gather(
        *(breaker.call(fail, ProviderUnavailable("down")) for _ in range(6)), return_exceptions=True
    )
    assert all(isinstance(result, ProviderUnavailable) for result in results)
    assert (await breaker.snapshot()).failures == 6


# -- Redis: state shared by processes, isolated per tenant connection ----------------------


@pytest.fixture
def namespace() -> str:
    return f"hub-test:breaker:{uuid.uuid4().hex}"


@pytest.fixture
async def redis_storage(redis_client, namespace: str):
    yield RedisBreakerStorage(redis_client, prefix=namespace, ttl=60)
    keys = await redis_client.keys(f"{namespace}:*")
    if keys:
        await redis_client.delete(*keys)


async def test_two_breaker_instances_share_state_through_redis(redis_client, namespace: str, redis_storage) -> None:
    # As two worker processes would: separate breaker objects and storages, one Redis.
    other_storage = RedisBreakerStorage(redis_client, prefix=namespace, ttl=60)
    first = AsyncCircuitBreaker.for_connection("tenant-a", "conn-1", storage=redis_storage, fail_max=4)
    second = AsyncCircuitBreaker.for_connection("tenant-a", "conn-1", storage=other_storage, fail_max=4)
    for breaker in (first, second, first):
        with pytest.raises(ProviderUnavailable):
            await breaker.call(fail, ProviderUnavailable("down"))
    assert (await second.snapshot()).failures == 3
    with pytest.raises(ProviderUnavailable):
        await second.call(fail, ProviderUnavailable("down"))
    assert await first.state() == "open"
    with pytest.raises(CircuitOpen):
        await first.call(succeed)
    # One hash per breaker under the namespace, expiring.
    key = f"{namespace}:tenant:tenant-a:connection:conn-1"
    assert await redis_client.hget(key, "state") == b"open"
    assert 0 < await redis_client.ttl(key) <= 60


async def test_one_tenant_connections_open_breaker_does_not_affect_another(redis_storage) -> None:
    broken = AsyncCircuitBreaker.for_connection("tenant-a", "conn-1", storage=redis_storage, fail_max=1)
    healthy = AsyncCircuitBreaker.for_connection("tenant-b", "conn-1", storage=redis_storage, fail_max=1)
    sibling = AsyncCircuitBreaker.for_connection("tenant-a", "conn-2", storage=redis_storage, fail_max=1)
    with pytest.raises(ProviderUnavailable):
        await broken.call(fail, ProviderUnavailable("down"))
    assert await broken.state() == "open"
    assert await healthy.call(succeed) == "ok"
    assert await sibling.call(succeed) == "ok"
    assert await healthy.state() == "closed" and await sibling.state() == "closed"


async def test_redis_half_open_trial_closes_for_everyone(redis_client, namespace: str, redis_storage) -> None:
    first = AsyncCircuitBreaker("t:c", storage=redis_storage, fail_max=1)
    second = AsyncCircuitBreaker("t:c", storage=RedisBreakerStorage(redis_client, prefix=namespace), fail_max=1)
    with pytest.raises(ProviderUnavailable):
        await first.call(fail, ProviderUnavailable("down"))
    await redis_storage.apply("t:c", [BreakerChange("opened_at", "set", time.time() - 3600)])
    assert await second.call(succeed) == "ok"
    assert await first.state() == "closed"


async def test_unreachable_redis_fails_open() -> None:
    from redis.asyncio import Redis

    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    breaker = AsyncCircuitBreaker("t:c", storage=RedisBreakerStorage(dead), fail_max=1)
    try:
        assert await breaker.call(succeed) == "ok"
        with pytest.raises(ProviderUnavailable):
            await breaker.call(fail, ProviderUnavailable("down"))
        assert await breaker.state() == "closed"  # nothing stored, and calls keep flowing
    finally:
        await dead.aclose()
