"""Plain ``sqlite3`` connections, each used from one thread of its own.

A transaction of the store is one plain function run in that thread: one thread hop per
transaction, however many statements it makes, and SQLite releases the GIL while it
works, so the event loop keeps serving requests meanwhile.

Durability. Webhook commits, and the operator's replays, flush the WAL before they
return (``synchronous=FULL``): they are acknowledged. The dispatcher's bookkeeping
(claims, outcomes, dry-run records) commits with ``synchronous=NORMAL``: no flush of its
own, so it does not hold the write lock, that webhook commits wait for, through an fsync.
A kill of the process loses none of it (the WAL is in the OS); a power loss may roll
back its last commits, never a webhook's, because the WAL is replayed in order and each
webhook commit flushes everything written before it. What a rolled-back outcome costs is
the SPEC's "crash between an upsert and its commit": the contact is synced again, and
upserts are idempotent.

Checkpoints are left to :class:`~receiver.store.sqlite.checkpoint.Checkpointer`, in a
thread of its own, so no commit waits for the WAL to be copied back; only a WAL past
``AUTOCHECKPOINT_PAGES`` makes a committing connection checkpoint, as a safety net.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from receiver.store.sqlite.write_lock import WriteLock

T = TypeVar("T")

# Every connection: wait for another process's write lock (the CLI) rather than fail,
# and flush the WAL on every commit, so an acknowledged event survives a power loss.
PRAGMAS = (
    "PRAGMA busy_timeout = 10000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
)
# Past this many WAL pages (64 MiB) a committing connection checkpoints after all: a
# safety net for a checkpointer that cannot keep up, not the normal way.
AUTOCHECKPOINT_PAGES = 16384
# A sustained burst grows the WAL past 100 MB (the checkpointer copies it back, but it can
# only start it again from the beginning in a pause); this is what the file is cut back
# to once it does, instead of keeping its largest size on disk.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
WRITER_PRAGMAS = (
    f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}",
    f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}",
)
BOOKKEEPING = "PRAGMA synchronous = NORMAL"
DURABLE = "PRAGMA synchronous = FULL"


def connect(path: str, extra: tuple[str, ...] = WRITER_PRAGMAS) -> sqlite3.Connection:
    """A plain connection in autocommit mode with the store's pragmas, then ``extra``."""
    # Not pinned to the thread that opens it, so a test may trace it.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in (*PRAGMAS, *extra):
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def durable_transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """:func:`in_transaction` with ``synchronous=FULL`` on a bookkeeping connection."""
    conn.execute(DURABLE)
    try:
        return in_transaction(conn, fn, *args)
    finally:
        conn.execute(BOOKKEEPING)


def in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` between ``BEGIN IMMEDIATE`` and ``COMMIT``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return result


async def run_to_end(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in ``executor``; if cancelled, still wait until it has returned.

    A transaction handed to a thread runs to its end whatever happens to the caller:
    returning early would let the caller believe it finished.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except Exception:  # its own outcome no longer matters: we were cancelled
                break
        raise


def _locked(lock: WriteLock, fn: Callable[..., T], *args: Any) -> T:
    with lock:
        return fn(*args)


class SQLiteWriter:
    """The dispatcher's and the CLI's writes: a connection and a thread of their own.

    Its transactions are bookkeeping (``synchronous=NORMAL``, see the module docstring)
    unless made with ``durable=True``. Each takes the write lock in the writer thread.
    """

    def __init__(self, path: str, lock: WriteLock) -> None:
        self._path = path
        self._lock = lock
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")

    async def open(self) -> None:
        """Connect in the writer thread."""
        self._conn = await run_to_end(
            self._thread, connect, self._path, (*WRITER_PRAGMAS, BOOKKEEPING)
        )

    async def close(self) -> None:
        """Close the connection after the transactions already handed to the thread."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await run_to_end(self._thread, conn.close)
        self._thread.shutdown(wait=True)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` holding the write lock, in one hop; ``fn`` makes its own."""
        return await run_to_end(self._thread, _locked, self._lock, fn, self._connection(), *args)

    async def transaction(self, fn: Callable[..., T], *args: Any, durable: bool = False) -> T:
        """``fn(conn, *args)`` as one transaction, holding the write lock, in one hop.

        ``durable``: flushed to disk before this returns, as an acknowledged write must be.
        """
        run = durable_transaction if durable else in_transaction
        conn = self._connection()
        return await run_to_end(self._thread, _locked, self._lock, run, conn, fn, *args)
