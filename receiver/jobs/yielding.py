"""How backfill and reconciliation give way to webhooks.

A webhook is answered only once its events are committed, so its ack waits for whatever
the process and the database are doing meanwhile. A backfill at full speed adds four
search pages a second, 200 contacts each: their commits, and above all the dispatch of
800 contacts a second (claims, upserts, records), on the same event loop, the same
database and the same HubSpot budget as the webhooks'. Alone that is fine; beside a
stream of webhooks it is what made their acks slow. So the jobs give way in two places:

- **Commits in slices.** A page's events are ingested :data:`SLICE_EVENTS` at a time,
  each slice waiting for its commit before the next is queued. A webhook that arrives
  meanwhile is queued ahead of the next slice, so its group commit carries at most one
  slice of the job's events, never a whole page (on SQLite the write lock is held for
  that one slice). The cost is a few more commits per page, which a backfill limited to
  four searches a second can afford.
- **Pages spaced under load.** While webhooks keep coming (:class:`WebhookLoad`: at
  least :data:`BUSY_REQUESTS` requests in the last :data:`BUSY_WINDOW_S`), a job waits
  up to :data:`BUSY_PAGE_GAP_S` before each further page (it goes on as soon as they go
  quiet), so beside a stream of webhooks it queues a quarter of its full rate, and the
  dispatcher, the database and the HubSpot pacer have that much less of its work beside
  the webhooks'. The job never stops: a portal with steady traffic still gets its
  backfill, only slower. A trickle of webhooks does not slow it down, and a lone
  webhook only ever waits for one slice's commit.

Why spacing rather than a pause until the webhooks stop: with a pause, a portal whose
webhooks never stop for a second would never be backfilled. Why not smaller slices
alone: measured at the store, a page's commit four times a second does not slow the
webhooks' commits; the cost comes with what the queued events bring into the process
(wake-ups, claims, upserts, records), so only queueing less at a time helps. Pacing by
the webhooks' rate rather than by their measured ack latency keeps the rule simple and
predictable (and testable without timings); the bench shows its effect. The load is
this process's: on PostgreSQL with several instances, a job gives way to the webhooks its
own instance receives (their commits' cost elsewhere is only the shared database's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence

from receiver.models import NewEvent
from receiver.store.base import EventStore

#: Events of a job committed at once.
SLICE_EVENTS = 50
#: Webhook requests within :data:`BUSY_WINDOW_S` that make the jobs space their pages.
BUSY_REQUESTS = 10
BUSY_WINDOW_S = 1.0
#: A job's wait before each page while webhooks are busy (search alone allows 4 a second).
BUSY_PAGE_GAP_S = 1.0
#: How often that wait looks whether the webhooks went quiet.
QUIET_CHECK_S = 0.1


class WebhookLoad:
    """Recent webhook requests (noted by the webhook endpoint), as the jobs see them."""

    def __init__(
        self,
        busy_requests: int = BUSY_REQUESTS,
        window_s: float = BUSY_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.busy_requests = busy_requests
        self.window_s = window_s
        self.clock = clock
        self._seen: deque[float] = deque()

    def note(self) -> None:
        """One webhook request is being stored."""
        now = self.clock()
        self._seen.append(now)
        self._forget(now)

    def busy(self) -> bool:
        """Whether webhooks keep coming: jobs should space their pages."""
        self._forget(self.clock())
        return len(self._seen) >= self.busy_requests

    def _forget(self, now: float) -> None:
        # Only the count within the window matters: keep no more than that.
        while self._seen and (
            self._seen[0] <= now - self.window_s or len(self._seen) > self.busy_requests
        ):
            self._seen.popleft()


async def ingest_in_slices(
    store: EventStore,
    events: Sequence[NewEvent],
    clock: Callable[[], float],
    slice_events: int = SLICE_EVENTS,
) -> int:
    """Commit ``events`` ``slice_events`` at a time, one slice after another; how many
    were new. A webhook queued meanwhile goes ahead of the next slice."""
    accepted = 0
    for start in range(0, len(events), slice_events):
        chunk = events[start : start + slice_events]
        accepted += (await store.ingest(chunk, clock())).accepted
    return accepted


async def give_way(load: WebhookLoad, gap_s: float, stopping: asyncio.Event) -> None:
    """Wait up to ``gap_s`` while webhooks are busy; less once they go quiet or
    ``stopping`` is set (the caller then stops)."""
    deadline = time.monotonic() + gap_s
    while load.busy() and not stopping.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, QUIET_CHECK_S)):
                await stopping.wait()
