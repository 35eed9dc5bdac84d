"""The database's write transactions: cancelled at any point, they end and free their locks."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

TOUCH = text("UPDATE tenants SET name = name WHERE id = :id")  # takes the write lock (and the row's)


@pytest.mark.parametrize("repeats", [0, 1, 3])
async def test_a_write_cancelled_even_while_it_rolls_back_leaves_the_database_writable(db, tenant, repeats):
    holding = asyncio.Event()

    async def writer() -> None:
        async with db.write(tenant.id) as session:
            await session.execute(TOUCH, {"id": tenant.id})
            holding.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(writer())
    await holding.wait()
    task.cancel()
    for _ in range(repeats):  # more cancellations while the rollback is under way
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with asyncio.timeout(5):  # SQLite's busy timeout is 10 s: a held lock would show
        async with db.write(tenant.id) as session:
            await session.execute(TOUCH, {"id": tenant.id})
