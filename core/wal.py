"""SQLite's WAL checkpoints, moved off the write path.

In WAL mode a commit appends the changed pages to the `-wal` file; a checkpoint copies
them back into the database file and syncs both files. SQLite's default is to checkpoint
inside the commit that takes the WAL past 1,000 pages (~4 MB), so every few megabytes one
writer waited for the copy and two fsyncs: in a 10,000-record sync the commits took
~180 ms in all, ~23 ms without those checkpoints (bench/sync.py), and a batch upsert's
commits ~5x as long as without them.

Here the writer's own checkpoint is only a safety net, far out (`SAFETY_NET_PAGES`), and
a `Checkpointer` runs PASSIVE checkpoints on a connection of its own, in a thread, soon
after writes: on the second core, while the writer goes on. PASSIVE never blocks the
writer or the readers (it copies what no reader still needs and leaves the rest for the
next pass). Durability is unchanged: `synchronous=NORMAL` syncs at checkpoints either way.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from contextlib import suppress

log = logging.getLogger("core.wal")

# The writer's `wal_autocheckpoint`: a commit checkpoints only if the background ones fell
# this far behind (~40 MB of 4 KiB pages).
SAFETY_NET_PAGES = 10_000
# `journal_size_limit`: a WAL that grew past this is truncated back when it restarts.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Writes are gathered this long before a checkpoint: one copy and two fsyncs per pass,
# not per commit (a busy hub commits hundreds of times a second).
DELAY_SECONDS = 0.5


class Checkpointer:
    """Checkpoints one SQLite database file in the background; `wrote` after each commit."""

    def __init__(self, path: str, *, delay: float = DELAY_SECONDS) -> None:
        self._path = path
        self._delay = delay
        self._task: asyncio.Task[None] | None = None
        self._again = False
        # The connection is used by one thread at a time: a checkpoint, or `close`.
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self.passes = 0  # checkpoints run (for tests and a curious operator)

    def wrote(self) -> None:
        """A write transaction committed: checkpoint soon (once for many commits)."""
        if self._closed:
            return
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            self._again = True
            return
        self._again = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-wal-checkpoints")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._delay)
            await asyncio.to_thread(self._checkpoint)
            if not self._again or self._closed:
                return
            self._again = False

    def _checkpoint(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self._connection is None:
                    self._connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                _busy, frames, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                # The next commit tries again; the writer's safety net bounds the WAL meanwhile.
                log.warning("WAL checkpoint failed", extra={"error": str(exc)})
                return
            self.passes += 1
            if frames > copied:
                log.debug("WAL checkpoint left frames for the next pass", extra={"frames": frames, "copied": copied})

    async def close(self) -> None:
        """Stop checkpointing; waits for a checkpoint under way (on the task's own loop)."""
        self._closed = True
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._close_connection)

    def _close_connection(self) -> None:
        with self._lock:  # after a checkpoint still running in its thread
            if self._connection is not None:
                self._connection.close()
                self._connection = None
