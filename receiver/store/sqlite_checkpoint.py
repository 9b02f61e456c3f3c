"""WAL checkpoints in a thread of their own, off the commit path.

By default SQLite checkpoints inside the commit that pushes the WAL past 1000 pages: that
commit then also copies every page back into the database file and flushes it, and the
webhook requests waiting on it wait for all that. The store's connections turn automatic
checkpoints off (``wal_autocheckpoint = 0``); this thread runs a ``PASSIVE`` checkpoint
every ``interval_s`` instead. A passive checkpoint takes no write lock, so commits go on
beside it, and the WAL stays small, which also keeps page look-ups in it fast.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from receiver.logging import get_logger

log = get_logger("receiver.store.sqlite_checkpoint")

DEFAULT_INTERVAL_S = 0.1


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection, periodically."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._connect = connect
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the checkpoint thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Run a last checkpoint and stop the thread (blocks until it has)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.wait(self._interval_s):
                self._checkpoint(conn)
            self._checkpoint(conn)
        finally:
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # try again next time; never let the thread die
            log.warning("wal_checkpoint_failed", error=str(exc))
