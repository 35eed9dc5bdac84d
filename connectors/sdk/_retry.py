"""Retry timing: exponential backoff with full jitter, and ``Retry-After`` parsing."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long ``HubHttp`` retries a failed call.

    :param max_attempts: total attempts, the first one included.
    :param base_delay: backoff before the second attempt, in seconds; doubles each attempt.
    :param max_delay: cap of a single backoff.
    :param max_retry_after: the longest wait honoured in-process; a provider asking for
        longer gets a ``RateLimited`` raised so the host can defer the job instead of
        holding a worker.
    :param random: returns a float in [0, 1); injectable for deterministic tests.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 60.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def backoff(self, attempt: int) -> float:
        """Delay before retrying after failed attempt number ``attempt`` (1-based).

        Full jitter (uniform in ``[0, min(max_delay, base_delay * 2**(attempt-1))]``) spreads
        retries of many workers instead of synchronising them on the provider.
        """
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(ceiling * self.random())


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    :param value: the header value.
    :param now: current epoch seconds, for tests.
    :returns: non-negative seconds, or ``None`` if the header is absent or malformed.
    """
    if value is None:
        return None
    value = value.strip()
    # ASCII only: str.isdigit() is also true for '²', which float() refuses.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past datetime's range
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
