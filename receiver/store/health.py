"""Whether the database itself is failing, and whether webhook commits fail because of it.

A full disk, a read-only file or a lost connection fails every commit, and ``/readyz``
should say so. But a failure is only known from a commit that was tried: an instance a
load balancer took out of rotation gets no more webhooks, so no success would ever clear
it. The failure is therefore forgotten after ``window_s`` too; if it persists, the next
webhooks fail again and report it again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import asyncpg

from receiver.errors import StoreError

WINDOW_S = 30.0
# SQLSTATE classes that say the database itself cannot do the work, not one request's
# data: connection (08), read-only (25), resources such as a full disk (53), shutting
# down (57), I/O (58).
_STORAGE_CLASSES = frozenset({"08", "25", "53", "57", "58"})
STORAGE_UNAVAILABLE = "The database could not be read or written just now; try again shortly."


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database, not the request, is the problem: a full disk, a
    lost connection, a file it may not write (either store's driver)."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in _STORAGE_CLASSES
    return isinstance(exc, StoreError | sqlite3.OperationalError | asyncpg.InterfaceError | OSError)


class CommitHealth:
    """The last database failure of a commit, until a commit succeeds or ``window_s`` ends."""

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._reason: str | None = None
        self._at = 0.0

    def failed(self, reason: str) -> None:
        """A commit failed because of the database: full, read-only, unreachable..."""
        self._reason, self._at = reason, self._clock()

    def succeeded(self) -> None:
        """A commit went through: the database takes writes."""
        self._reason = None

    def problem(self) -> str | None:
        """Why commits fail, or None when they did not fail lately."""
        if self._reason is None or self._clock() - self._at >= self.window_s:
            return None
        return self._reason
