"""The SQLite store's write lock: webhook acks go before background writes.

SQLite has one writer at a time. A webhook request waits for its commit before it is
answered, while the dispatcher's writes (claims, outcomes, dry-run records) are
background work on events that are already durable. So waiting ingest commits are let
in before waiting dispatcher transactions; a burst is acknowledged at full speed and
dispatched after. A background waiter that has waited ``max_wait_s`` is let in first,
so sustained ingest slows dispatching down but never stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

DEFAULT_MAX_WAIT_S = 0.5


class WriteLock:
    """An asyncio lock with an ``urgent()`` way in; ``async with lock`` is the normal one."""

    def __init__(
        self, max_wait_s: float = DEFAULT_MAX_WAIT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._max_wait_s = max_wait_s
        self._clock = clock

    def locked(self) -> bool:
        """Whether someone holds the lock."""
        return self._held

    async def acquire(self, urgent: bool = False) -> None:
        """Wait for the lock; urgent waiters are served before normal ones."""
        if not self._held:
            self._held = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._clock(), future)
        if urgent:
            self._urgent.append(future)
        else:
            self._normal.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            elif urgent:
                with contextlib.suppress(ValueError):
                    self._urgent.remove(future)
            else:
                with contextlib.suppress(ValueError):
                    self._normal.remove(entry)
            raise

    def release(self) -> None:
        """Hand the lock to the next waiter, or free it."""
        if not self._held:
            raise RuntimeError("release of an unlocked WriteLock")
        while True:
            future = self._next()
            if future is None:
                self._held = False
                return
            if not future.done():
                future.set_result(None)  # the lock passes on, still held
                return

    def _next(self) -> asyncio.Future[None] | None:
        if self._normal and (
            not self._urgent or self._clock() - self._normal[0][0] >= self._max_wait_s
        ):
            return self._normal.popleft()[1]
        if self._urgent:
            return self._urgent.popleft()
        return None

    @contextlib.asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        """Hold the lock, going before every normal waiter that has not waited too long."""
        await self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
