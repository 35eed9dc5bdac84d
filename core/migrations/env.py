"""Alembic environment. `core.migrate` hands in a live connection; the alembic CLI
builds one from the hub's settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from core.models import Base

target_metadata = Base.metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_settings() -> None:
    from core.db import engine_for_migrations
    from core.settings import get_settings

    engine = engine_for_migrations(get_settings().effective_database_url)
    async with engine.begin() as conn:
        await conn.run_sync(_configure_and_run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _configure_and_run(connection)
else:
    asyncio.run(_run_from_settings())
