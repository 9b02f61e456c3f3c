"""WAL checkpoints of the SQLite store, in a thread and a connection of their own.

By SQLite's default, the commit that grows the WAL past 1,000 pages copies the WAL back
into the database file, with an fsync of that file, before it returns: every few
thousand events one webhook commit, and every request of its group, paid for that copy
(a p99 of hundreds of milliseconds under a burst). Here the committing connections leave
the copy to a :class:`Checkpointer`, which runs ``PASSIVE`` checkpoints: they never take
the write lock and never wait for a reader, so commits go on beside them. Once a
checkpoint has copied the whole WAL, the next commit starts the WAL again from its
beginning. Only past :data:`~receiver.store.sqlite.thread.AUTOCHECKPOINT_PAGES` does a
committing connection checkpoint after all, a safety net for a checkpointer that cannot
keep up.

How often: every :data:`ACTIVE_INTERVAL_S` while other connections keep committing,
every :data:`IDLE_INTERVAL_S` once a pass finds no commit since the last one
(:func:`next_interval`, on SQLite's ``data_version``). Each pass ends with an fsync of
the database file for everything it copied, and a webhook commit's own flush of the WAL
waits behind it at the disk. Under a burst of batches the WAL grows by some 40 MB in
250 ms: passes that far apart took 50-265 ms, commits during them as long, and the ack
p99 of batches of 100 at 10 connections was 78-410 ms in three runs out of four. Every
50 ms each pass is a fifth of that, and the p99 stayed at 30-35 ms in four runs out of
four, at the same throughput (``bench/README.md``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from receiver.ops.logging import get_logger
from receiver.ops.tasks import cancel_and_wait
from receiver.store.sqlite.thread import connect, run_to_end

log = get_logger("receiver.store")

ACTIVE_INTERVAL_S = 0.05
IDLE_INTERVAL_S = 0.25


class Progress(NamedTuple):
    """What one pass saw."""

    pages: int  # in the WAL; -1 when SQLite could not run it (another checkpoint was)
    copied: int  # pages of the WAL now in the database file
    version: int  # SQLite's data_version: changes when another connection commits


def checkpoint(conn: sqlite3.Connection) -> Progress:
    """One ``PASSIVE`` checkpoint: copy what it can, wait for nobody."""
    _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return Progress(int(pages), int(copied), int(version))


def next_interval(
    before: Progress | None, after: Progress | None, active_s: float, idle_s: float
) -> float:
    """Seconds to the next pass: ``active_s`` after commits by others, else ``idle_s``.

    Commits are told by ``data_version``, not by the WAL's size: a WAL started again from
    its beginning can be just as long as at the last pass. ``after`` is None when the pass
    failed; the first pass counts as active when it found pages to copy.
    """
    if after is None:
        return idle_s
    if before is None:
        return active_s if after.pages > 0 else idle_s
    return active_s if after.version != before.version else idle_s


class Checkpointer:
    """Copies the WAL back into the database file, often while it grows."""

    def __init__(
        self,
        path: str,
        active_interval_s: float = ACTIVE_INTERVAL_S,
        idle_interval_s: float = IDLE_INTERVAL_S,
    ) -> None:
        self._path = path
        self.active_interval_s = active_interval_s
        self.idle_interval_s = idle_interval_s
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
        before: Progress | None = None
        interval = self.idle_interval_s
        while True:
            await asyncio.sleep(interval)
            after: Progress | None
            try:
                after = await run_to_end(self._thread, checkpoint, conn)
            except sqlite3.Error as exc:  # e.g. the disk is full: commits will say so too
                log.warning("checkpoint_failed", error=str(exc))
                after = None
            interval = next_interval(before, after, self.active_interval_s, self.idle_interval_s)
            before = after
