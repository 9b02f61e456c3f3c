"""Reconciliation: every ``RECONCILE_INTERVAL_S``, queue the contacts modified since the
last pass, to catch the changes whose webhooks never came.

A pass searches ``lastmodifieddate >= watermark - 5 min`` (the overlap covers HubSpot's
search index lag) in the synced stages, and writes each contact found as a
``stagesync.reconcile`` event through the store's ingest. Its duplicate key is the
contact and its ``updatedAt``, so a modification the overlap finds again is a
duplicate, not a second sync. The dispatcher then skips (``unchanged``) a contact whose
record would be what was last upserted for it, with no target call: HubSpot bumps the
modification time for analytics properties all day.

The watermark, the time of the last pass and its count are stored, and a pass is leased
like a backfill job: on PostgreSQL with several instances one runs it, and each waits
for the interval to pass since the last pass of any of them. The new watermark is the
time the pass started, stored only when it succeeded; with none yet, a pass looks back
one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from receiver.hubspot.search import ContactSearch, Filter, SearchCursor
from receiver.jobs.events import search_event
from receiver.jobs.paging import Pager
from receiver.ops.logging import get_logger
from receiver.ops.metrics import Metrics
from receiver.store.base import EventStore
from receiver.sync.mapping import LIFECYCLE_STAGE
from receiver.sync.rules import RECONCILE

log = get_logger("receiver.jobs.reconcile")

OVERLAP_S = 300.0
DEFAULT_INTERVAL_S = 900.0
#: A pass's lease: renewed with every page, so only a stalled pass loses it.
LEASE_S = 300.0
MODIFIED = "lastmodifieddate"


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: contacts found, new events queued, the watermark it stored."""

    found: int
    queued: int
    since: float
    watermark: float
    calls: int


class Reconciler:
    """Runs reconciliation passes, periodically or on demand."""

    def __init__(
        self,
        *,
        store: EventStore,
        search: ContactSearch,
        properties: Sequence[str],
        stages: Sequence[str],
        interval_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.store = store
        self.search = search
        self.properties = list(dict.fromkeys([LIFECYCLE_STAGE, *properties]))
        self.stages = tuple(stages)
        self.interval_s = interval_s
        self.metrics = metrics
        self.clock = clock
        self.owner = owner or f"reconcile-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run a pass whenever the interval has passed since the last one (any instance's)."""
        self._task = asyncio.create_task(self._loop(self.clock()), name="reconcile")

    async def stop(self) -> None:
        """Stop; a pass cut short stores nothing and its lease expires."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, started_at: float) -> None:
        while True:
            try:
                state = await self.store.reconcile_state()
                due = (state.last_run_at or started_at) + self.interval_s
                wait = due - self.clock()
                if wait <= 0:
                    await self.run_pass()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile_failed")
                wait = min(self.interval_s, 60.0)
            await asyncio.sleep(min(wait, 60.0))

    async def run_pass(self) -> PassResult | None:
        """One pass now; None when another instance is running one."""
        started = self.clock()
        state = await self.store.take_reconcile(self.owner, started, self.lease_s)
        if state is None:
            log.info("reconcile_busy")
            return None
        look_back = self.interval_s if self.interval_s > 0 else DEFAULT_INTERVAL_S
        since = state.watermark - OVERLAP_S if state.watermark is not None else started - look_back
        filters = [
            Filter(MODIFIED, "GTE", str(int(since * 1000))),
            Filter(LIFECYCLE_STAGE, "IN", values=self.stages),
        ]
        pager = Pager(self.search, self.properties, self.clock)
        found = queued = 0
        cursor: SearchCursor | None = SearchCursor()

        async def wait(seconds: float) -> None:
            await asyncio.sleep(seconds)
            await self.store.take_reconcile(self.owner, self.clock(), self.lease_s)

        try:
            while cursor is not None:
                page = await pager.page(filters, cursor, wait, "reconcile")
                events = [search_event(hit, RECONCILE) for hit in page.hits]
                if events:
                    queued += (await self.store.ingest(events, self.clock())).accepted
                found += len(page.hits)
                cursor = page.next
                if cursor is not None:
                    await self.store.take_reconcile(self.owner, self.clock(), self.lease_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.store.finish_reconcile(self.owner, None, found, self.clock())
            if self.metrics is not None:
                self.metrics.reconcile_runs.labels(result="error").inc()
            log.warning("reconcile_pass_failed", error=str(exc)[:300], found=found)
            raise
        await self.store.finish_reconcile(self.owner, started, found, self.clock())
        if self.metrics is not None:
            self.metrics.reconcile_runs.labels(result="ok").inc()
        log.info("reconcile_pass_done", found=found, queued=queued, calls=pager.calls)
        return PassResult(found, queued, since, started, pager.calls)
