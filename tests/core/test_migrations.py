"""The Alembic migrations build exactly the schema the models describe, and can be
walked down to nothing and up again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from core.db import engine_for_migrations
from core.migrate import alembic_config, upgrade_to_head
from core.models import Base
from tests.conftest import _pg_create_database, _pg_drop_database, pg_url

TABLES = {t.name for t in Base.metadata.sorted_tables}


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def _run(url: str, fn: Any) -> Any:
    engine = engine_for_migrations(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


@pytest.fixture
async def fresh_url(database_url: str, tmp_path) -> AsyncIterator[str]:
    """An empty database on the same backend as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = await _pg_create_database()
    try:
        yield pg_url(name)
    finally:
        await _pg_drop_database(name)


async def test_migrated_schema_matches_the_models(database_url):
    await upgrade_to_head(database_url)  # a no-op when the app already migrated it
    assert await _run(database_url, _differences) == []


async def test_migrating_twice_is_harmless(fresh_url):
    await upgrade_to_head(fresh_url)
    await upgrade_to_head(fresh_url)
    assert await _run(fresh_url, _differences) == []


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _downgrade(connection: Connection) -> None:
    command.downgrade(alembic_config(connection), "base")


async def _audit_is_append_only(url: str) -> None:
    """Insert a tenant with one audit event, then try to change it."""
    def setup(conn: Connection) -> None:
        conn.execute(text("INSERT INTO tenants (id, name, limits, created_at) VALUES ('t1', 't1', '{}', '2026-01-01')"))
        conn.execute(text(
            "INSERT INTO audit_events (id, tenant_id, seq, event_type, actor_kind, actor_id, actor_roles, resource_type,"
            " resource_id, changes, occurred_at, prev_hash, hash) VALUES ('e1', 't1', 1, 'x', 'system', 'me', '[]',"
            " 'deal', 'd1', '{}', '2026-01-01', 'p', 'h')"))

    await _run(url, setup)
    for statement in ("UPDATE audit_events SET event_type = 'y'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            await _run(url, lambda conn, s=statement: conn.execute(text(s)))


async def test_downgrade_to_base_and_upgrade_again(fresh_url):
    await upgrade_to_head(fresh_url)
    assert TABLES <= await _run(fresh_url, _tables)

    await _run(fresh_url, _downgrade)
    assert await _run(fresh_url, _tables) <= {"alembic_version"}

    await upgrade_to_head(fresh_url)
    assert TABLES <= await _run(fresh_url, _tables)
    assert await _run(fresh_url, _differences) == []
    # The append-only triggers came back with the tables.
    await _audit_is_append_only(fresh_url)
