"""The limiter's buckets on a real Redis: concurrent checks share one round trip, and
each is still charged on its own, in order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from core.ratelimit import RateLimiter


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_concurrent_checks_share_a_round_trip_and_are_each_charged(redis):
    limiter = RateLimiter(redis)
    warm = await limiter.hit(f"warm-{uuid.uuid4()}", per_minute=60, burst=5)  # loads the script
    assert warm.allowed
    key, other = f"t-{uuid.uuid4()}", f"t-{uuid.uuid4()}"

    before = await _script_calls(redis)
    decisions = await asyncio.gather(
        *(limiter.hit(key, per_minute=60, burst=5) for _ in range(8)), limiter.hit(other, per_minute=60, burst=5)
    )
    calls = await _script_calls(redis) - before

    mine, theirs = decisions[:8], decisions[8]
    assert [d.allowed for d in mine] == [True] * 5 + [False] * 3
    assert [d.remaining for d in mine[:5]] == [4, 3, 2, 1, 0]
    assert all(d.retry_after_seconds >= 1 for d in mine[5:])
    assert theirs.allowed and theirs.remaining == 4  # its own bucket
    # Nine checks made at once: the first goes alone, the other eight wait and go together.
    assert 1 <= calls <= 2


async def test_a_check_whose_request_went_away_does_not_hold_up_the_others(redis):
    limiter = RateLimiter(redis)
    key = f"t-{uuid.uuid4()}"
    first = asyncio.ensure_future(limiter.hit(key, per_minute=60, burst=5))
    gone = asyncio.ensure_future(limiter.hit(key, per_minute=60, burst=5))
    last = asyncio.ensure_future(limiter.hit(key, per_minute=60, burst=5))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await first).allowed and (await last).allowed
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_an_unreachable_redis_fails_every_waiting_check_open(redis_url):
    fallbacks = []
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    limiter = RateLimiter(dead, on_fail_open=lambda: fallbacks.append(1))
    decisions = await asyncio.gather(*(limiter.hit("t", per_minute=60, burst=5) for _ in range(4)))
    assert all(d.allowed and d.failed_open and d.remaining is None for d in decisions)
    assert len(fallbacks) == 4
    await dead.aclose()


async def test_an_unexpected_failure_reaches_every_waiting_check_and_the_next_ones_go_through(redis):
    """A bug in reading Redis's answer must not leave requests waiting for ever."""
    limiter = RateLimiter(redis)
    real = limiter._script
    answers = iter([RuntimeError("garbled answer")])

    async def flaky(**kwargs):
        failure = next(answers, None)
        if failure is not None:
            raise failure
        return await real(**kwargs)

    limiter._script = flaky
    key = f"t-{uuid.uuid4()}"
    results = await asyncio.gather(*(limiter.hit(key, per_minute=60, burst=5) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError] * 3
    assert (await limiter.hit(key, per_minute=60, burst=5)).allowed
