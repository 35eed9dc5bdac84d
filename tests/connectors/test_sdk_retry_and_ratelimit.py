"""Backoff timing, Retry-After parsing and the token bucket."""

from __future__ import annotations

import asyncio
import email.utils

import pytest

from connectors.sdk import RateLimit, RetryPolicy, TokenBucket
from connectors.sdk._retry import parse_retry_after


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    top = RetryPolicy(base_delay=0.5, max_delay=4.0, random=lambda: 0.999999)
    assert [round(top.backoff(n), 3) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    bottom = RetryPolicy(random=lambda: 0.0)
    assert bottom.backoff(3) == 0.0


def test_backoff_spreads_retries() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    delays = {policy.backoff(4) for _ in range(50)}
    assert len(delays) > 40 and all(0 <= delay <= 8.0 for delay in delays)


@pytest.mark.parametrize(("value", "expected"), [("7", 7.0), (" 0 ", 0.0), ("120", 120.0)])
def test_retry_after_in_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(42.0)


def test_retry_after_in_the_past_means_now() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize(
    "value",
    [
        None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2024 25:61:00",
        "²", "١٢",  # str.isdigit() is true for these; only ASCII digits are delta-seconds
        "Mon, 01 Jan 99999999999 00:00:00 GMT",  # a year past datetime's range
    ],
)
def test_malformed_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None


class FakeClock:
    """A monotonic clock that only moves when the bucket sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_token_bucket_allows_a_burst_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await bucket.acquire()
    assert clock.sleeps == []
    await bucket.acquire()
    await bucket.acquire()
    assert clock.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]
    assert clock.now == pytest.approx(1.0)


async def test_token_bucket_refills_over_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, capacity=5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await bucket.acquire()
    clock.now += 0.3  # three tokens back
    for _ in range(3):
        await bucket.acquire()
    assert clock.sleeps == []


async def test_token_bucket_serves_concurrent_waiters_in_order() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=1, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def worker(number: int) -> None:
        await bucket.acquire()
        order.append(number)

    await asyncio.gather(*(worker(n) for n in range(4)))
    assert order == [0, 1, 2, 3]
    assert clock.now == pytest.approx(3.0)


def test_token_bucket_from_a_declared_limit() -> None:
    bucket = TokenBucket.from_limit(RateLimit(requests=900, per_seconds=60))
    assert bucket.rate == pytest.approx(15.0) and bucket.capacity == 900
    assert TokenBucket.from_limit(RateLimit(requests=10, burst=20)).capacity == 20


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimit(requests=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
