"""The SQLite store's write lock: webhook commits go before background writes.

SQLite has one writer at a time. Two connections of the store write: webhook ingest's,
from a thread of its own, and the dispatcher's (and replays' and retention's), from
another. Each write transaction holds this lock, taken in the thread that writes, so the
two never meet at SQLite's file lock, whose busy handler sleeps in steps of milliseconds.

A webhook request waits for its commit before it is answered, while the dispatcher's
writes concern events that are durable already. So a waiting ingest commit is let in
before a waiting background write: a burst is acknowledged at full speed and dispatched
after. A background writer that has waited ``max_wait_s`` goes first, so that sustained
ingest slows dispatching down but never stops it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

DEFAULT_MAX_WAIT_S = 0.5


class WriteLock:
    """A blocking lock for threads, with an ``urgent()`` way in; ``with lock`` is the normal one."""

    def __init__(
        self, max_wait_s: float = DEFAULT_MAX_WAIT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._urgent = 0  # urgent waiters
        self._normal: list[float] = []  # when each normal waiter started waiting
        self._max_wait_s = max_wait_s
        self._clock = clock

    def acquire(self, urgent: bool = False) -> None:
        """Block until the lock is ours; urgent callers pass normal ones not yet overdue."""
        with self._cond:
            if urgent:
                self._urgent += 1
                try:
                    while self._held or self._overdue():
                        self._cond.wait()
                finally:
                    self._urgent -= 1
            else:
                since = self._clock()
                self._normal.append(since)
                try:
                    while self._held or (self._urgent and not self._overdue(since)):
                        # Once overdue, only a release can change anything.
                        left = since + self._max_wait_s - self._clock()
                        self._cond.wait(left if left > 0 else None)
                finally:
                    self._normal.remove(since)
            self._held = True

    def release(self) -> None:
        """Free the lock and wake the waiters, who settle who is next."""
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unlocked WriteLock")
            self._held = False
            self._cond.notify_all()

    def contended(self) -> bool:
        """Whether a webhook commit (an urgent caller) is waiting for the lock right now."""
        return self._urgent > 0

    def _overdue(self, since: float | None = None) -> bool:
        oldest = since if since is not None else min(self._normal, default=None)
        return oldest is not None and self._clock() - oldest >= self._max_wait_s

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Hold the lock, going before every normal waiter that has not waited too long."""
        self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
