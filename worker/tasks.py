"""Stopping the worker's asyncio tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


# How long a cancelled task gets to clean up before it is cancelled again.
CLEANUP_SECONDS = 5.0


async def cancel_all(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until they are done. A cancellation can be lost on Python
    3.11 when it lands just as an `asyncio.timeout` expires (redis-py probes each pooled
    connection with `timeout(0)`; aiohttp times requests with it), so it is repeated
    until each task has ended, but only after the first has had time to clean up: a
    second cancellation landing while a task rolls back its database transaction makes
    SQLAlchemy abandon the connection unclosed, and on SQLite its write lock then stays
    held (every later write failed with "database is locked")."""
    pending = {t for t in tasks if not t.done()}
    timeout = CLEANUP_SECONDS
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=timeout)
        timeout = 0.2
