"""RedisLock, on the real Redis the suite runs against: one holder at a time across
clients (processes), expiry of a dead holder's lock, and going ahead without it rather
than refusing work."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from connectors.locks import RedisLock


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex}"


async def test_two_clients_hold_a_lock_one_after_the_other(redis_url: str, name: str) -> None:
    # As two processes would: a client each.
    first, second = Redis.from_url(redis_url), Redis.from_url(redis_url)
    events: list[str] = []

    async def work(lock: RedisLock, who: str) -> None:
        async with lock.held(name) as got:
            assert got
            events.append(f"{who} in")
            await asyncio.sleep(0.1)
            events.append(f"{who} out")

    try:
        a, b = RedisLock(first, poll_seconds=0.01), RedisLock(second, poll_seconds=0.01)
        await asyncio.gather(work(a, "a"), work(b, "b"))
    finally:
        await first.aclose()
        await second.aclose()
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


async def test_a_dead_holders_lock_expires(redis: Redis, name: str) -> None:
    await redis.set("hub:lock:" + name, "a process that died", px=200)
    started = time.monotonic()
    async with RedisLock(redis, poll_seconds=0.01).held(name) as got:
        assert got
    assert 0.15 <= time.monotonic() - started < 2


async def test_a_holder_whose_lock_expired_does_not_release_the_next_holders(redis: Redis, name: str) -> None:
    slow = RedisLock(redis, ttl_seconds=0.1)
    async with slow.held(name):
        await asyncio.sleep(0.2)  # outlives its lock
        async with RedisLock(redis).held(name) as got:
            assert got
    assert await redis.exists("hub:lock:" + name) == 0  # the second released its own
    async with slow.held(name):
        await asyncio.sleep(0.2)
        await redis.set("hub:lock:" + name, "the next holder", px=5000)
    assert await redis.get("hub:lock:" + name) == b"the next holder"


async def test_a_lock_held_too_long_is_gone_ahead_without(redis: Redis, name: str) -> None:
    await redis.set("hub:lock:" + name, "a slow holder", px=5000)
    started = time.monotonic()
    async with RedisLock(redis, wait_seconds=0.2, poll_seconds=0.02).held(name) as got:
        assert got is False
    assert time.monotonic() - started < 1


async def test_without_redis_the_work_goes_ahead_unlocked(name: str, caplog: Any) -> None:
    unreachable = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        async with RedisLock(unreachable).held(name) as got:
            assert got is False
    finally:
        await unreachable.aclose()
    assert "going ahead without it" in caplog.text
