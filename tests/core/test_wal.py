"""SQLite's WAL checkpoints run in the background (core.wal), not inside a writer's commit."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from core import wal
from core.db import Database

CREATE = text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
INSERT = text("INSERT INTO notes (body) VALUES (:body)")


def rows_in_database_file(path: Path, scratch: Path) -> int:
    """Rows of `notes` in the database file alone: what checkpoints copied out of the WAL."""
    shutil.copyfile(path, scratch)  # without its -wal file, SQLite reads the main file only
    with sqlite3.connect(scratch) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM notes").fetchone()[0])
        except sqlite3.OperationalError:  # the table itself is not checkpointed yet
            return 0
        finally:
            Path(f"{scratch}-wal").unlink(missing_ok=True)


@pytest.fixture
async def sqlite_db(tmp_path: Path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    async with db.write(None) as session:
        await session.execute(CREATE)
    yield db
    await db.dispose()


async def test_a_commit_leaves_its_pages_in_the_wal_and_a_background_checkpoint_copies_them(sqlite_db, tmp_path):
    path, scratch = tmp_path / "hub.db", tmp_path / "copy.db"
    async with sqlite_db.write(None) as session:
        await session.execute(INSERT, {"body": "first"})
    # Nothing has awaited since the commit: the writer did not checkpoint in it.
    assert rows_in_database_file(path, scratch) == 0
    async with asyncio.timeout(10):
        while rows_in_database_file(path, scratch) < 1:
            await asyncio.sleep(0.1)


async def test_many_commits_share_one_checkpoint(sqlite_db, tmp_path):
    before = sqlite_db._checkpoints.passes
    for n in range(50):
        async with sqlite_db.write(None) as session:
            await session.execute(INSERT, {"body": f"note {n}"})
    async with asyncio.timeout(10):
        while rows_in_database_file(tmp_path / "hub.db", tmp_path / "copy.db") < 50:
            await asyncio.sleep(0.1)
    # The 50 commits took well under the gathering delay: one pass for all (two at most,
    # if the pass the CREATE started was still waiting when they began).
    assert 1 <= sqlite_db._checkpoints.passes - before <= 2


async def test_the_writer_checkpoints_only_as_a_safety_net(sqlite_db):
    async with sqlite_db.write(None) as session:
        assert (await session.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == wal.SAFETY_NET_PAGES
        assert (await session.execute(text("PRAGMA journal_size_limit"))).scalar() == wal.WAL_SIZE_LIMIT


async def test_dispose_stops_the_checkpointer(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    async with db.write(None) as session:
        await session.execute(CREATE)
    assert any(t.get_name() == "sqlite-wal-checkpoints" for t in asyncio.all_tasks())
    await db.dispose()
    assert not any(t.get_name() == "sqlite-wal-checkpoints" and not t.done() for t in asyncio.all_tasks())
    # A disposed database's file is whole: the last connection's close checkpointed it.
    assert not (tmp_path / "hub.db-wal").exists() or (tmp_path / "hub.db-wal").stat().st_size == 0
    with sqlite3.connect(tmp_path / "hub.db") as connection:
        assert connection.execute("SELECT count(*) FROM notes").fetchone()[0] == 0
