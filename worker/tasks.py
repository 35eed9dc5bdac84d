"""Stopping the worker's asyncio tasks reliably."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


async def cancel_all(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until they are done. A cancellation can be lost on Python
    3.11 when it lands just as an `asyncio.timeout` expires (redis-py probes each pooled
    connection with `timeout(0)`; aiohttp times requests with it), so it is repeated
    until each task has ended."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
