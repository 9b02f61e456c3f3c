"""Client-side pacing for HubSpot calls.

HubSpot counts every call of a private app against a rolling ten-second window that
is shared by the whole portal. Answering a 429 is cheap for HubSpot but not for us:
HubSpot asks that error answers stay under 5 % of all calls, and each 429 delays a
batch of events. So stagesync paces itself below the limit with a sliding-window log
of its own recent calls, and when HubSpot still answers 429 (other apps in the portal
share the budget) every caller waits until the pause is over, not only the one that
was refused.

The limiter is pure apart from the injectable ``clock`` and ``sleep``; unit tests pass
a fake clock whose ``sleep`` advances it, so nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

#: HubSpot's ten-secondly limit for a private app on Free/Starter, the lowest tier.
DEFAULT_MAX_REQUESTS = 100
DEFAULT_INTERVAL_S = 10.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class RequestPacer:
    """Allow at most ``max_requests`` calls in any ``interval_s`` window (sliding).

    ``acquire()`` returns at once while the window has room, else it sleeps until the
    oldest call in the window leaves it. Waiters are served first come, first served.
    ``pause_until(t)`` holds every caller until ``t``, in the pacer's own clock
    (``time.monotonic`` by default, not wall-clock time).
    """

    def __init__(
        self,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, got {max_requests}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.max_requests = max_requests
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        # Start stamps of calls not yet ``done()``. A finished call is re-stamped with
        # its end time: the upstream counts arrivals, and a call stamped at its start
        # can arrive in the next window, one too many there.
        self._starts: deque[float] = deque()
        self._paused_until = float("-inf")
        # Serialises waiters so they are served in arrival order and only the head of
        # the queue polls the clock; asyncio.Lock is FIFO.
        self._lock = asyncio.Lock()

    @property
    def paused_until(self) -> float:
        """The time (pacer clock) before which no call starts; ``-inf`` when not paused."""
        return self._paused_until

    def pause_until(self, t: float) -> None:
        """Hold every caller until ``t`` (pacer clock). An earlier ``t`` never shortens a pause."""
        self._paused_until = max(self._paused_until, t)

    def pause_for(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now."""
        self.pause_until(self._clock() + max(0.0, seconds))

    def delay(self) -> float:
        """Seconds a call made now would have to wait (0 when it could start at once)."""
        now = self._clock()
        self._expire(now)
        wait = self._paused_until - now
        if len(self._sent) >= self.max_requests:
            wait = max(wait, self._sent[0] + self.interval_s - now)
        return max(0.0, wait)

    async def acquire(self) -> None:
        """Wait until a call may start, then count it as started."""
        async with self._lock:
            while True:
                wait = self.delay()
                if wait <= 0:
                    started = self._clock()
                    self._sent.append(started)
                    self._starts.append(started)
                    return
                await self._sleep(wait)

    def done(self) -> None:
        """Count a call acquired with :meth:`acquire` as finished (call it in ``finally``)."""
        if not self._starts:
            return
        started = self._starts.popleft()
        with contextlib.suppress(ValueError):  # already left the window
            self._sent.remove(started)
        self._sent.append(self._clock())

    def _expire(self, now: float) -> None:
        horizon = now - self.interval_s
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
