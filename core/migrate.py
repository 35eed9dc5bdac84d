"""Apply the Alembic migrations, on start and from `hub migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from core.db import engine_for_migrations

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant will do: it only has to be the same in every hub process.
_PG_MIGRATION_LOCK = 7_410_021


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several hub processes may start at once; only one migrates at a time.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), "head")


async def upgrade_to_head(url: str) -> None:
    engine = engine_for_migrations(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()
