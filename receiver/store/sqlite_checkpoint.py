"""WAL checkpoints of the SQLite store, in a thread and a connection of their own.

By SQLite's default, the commit that grows the WAL past 1,000 pages copies the WAL back
into the database file, with an fsync of that file, before it returns: every few
thousand events one webhook commit, and every request of its group, paid for that copy
(a p99 of hundreds of milliseconds under a burst). Here the committing connections leave
the copy to a :class:`Checkpointer`, which runs a ``PASSIVE`` checkpoint every
``interval_s``: it never takes the write lock and never waits for a reader, so commits
go on beside it. Once a checkpoint has copied the whole WAL, the next commit starts the
WAL again from its beginning, so the file stays about as large as one interval of writes.
Only past :data:`~receiver.store.sqlite_thread.AUTOCHECKPOINT_PAGES` does a committing
connection checkpoint after all, a safety net for a checkpointer that cannot keep up.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from receiver.logging import get_logger
from receiver.store.sqlite_thread import connect, run_to_end
from receiver.tasks import cancel_and_wait

log = get_logger("receiver.store")

DEFAULT_INTERVAL_S = 0.25


def checkpoint(conn: sqlite3.Connection) -> None:
    """One ``PASSIVE`` checkpoint: copy what it can, wait for nobody."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").close()


class Checkpointer:
    """Copies the WAL back into the database file every ``interval_s``."""

    def __init__(self, path: str, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._path = path
        self.interval_s = interval_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect in the checkpoint thread and start the loop."""
        self._conn = await run_to_end(self._thread, connect, self._path, ())
        self._task = asyncio.create_task(self._loop(), name="sqlite-checkpoint")

    async def stop(self) -> None:
        """Stop the loop, let a checkpoint in progress finish, and close."""
        await cancel_and_wait([self._task])
        self._task = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await run_to_end(self._thread, conn.close)
        self._thread.shutdown(wait=True)

    async def _loop(self) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await run_to_end(self._thread, checkpoint, conn)
            except sqlite3.Error as exc:  # e.g. the disk is full: commits will say so too
                log.warning("checkpoint_failed", error=str(exc))
