"""Reconciliation: every ``RECONCILE_INTERVAL_S``, queue the contacts modified since the
last pass, to catch the changes whose webhooks never came.

A pass searches ``lastmodifieddate >= watermark - 5 min`` (the overlap covers HubSpot's
search index lag) in the stages of the syncs that are on in the sync settings in force,
read at the start of each pass (so a change saved on any instance applies to the next),
and writes each contact found as a ``stagesync.reconcile`` event through the store's
ingest. Its duplicate key is the contact and its ``updatedAt``, so a modification the
overlap finds again is a duplicate, not a second sync. The dispatcher then skips
(``unchanged``) a contact whose record would be what was last upserted for it, with no
target call: HubSpot bumps the modification time for analytics properties all day. A
pass gives way to webhooks as a backfill does (:mod:`receiver.jobs.yielding`).

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
from receiver.jobs.backfill import SyncedStages
from receiver.jobs.events import search_event
from receiver.jobs.paging import Pager, TokenAlerts
from receiver.jobs.yielding import BUSY_PAGE_GAP_S, WebhookLoad, give_way, ingest_in_slices
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
        stages: SyncedStages,
        interval_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lease_s: float = LEASE_S,
        load: WebhookLoad | None = None,
        alerts: TokenAlerts | None = None,
    ) -> None:
        self.store = store
        self.alerts = alerts
        #: The webhook traffic a pass gives way to, as a backfill does (None: none).
        self.load = load
        self.search = search
        self.properties = list(dict.fromkeys([LIFECYCLE_STAGE, *properties]))
        self.stages = stages
        self.interval_s = interval_s
        self.metrics = metrics
        self.clock = clock
        self.owner = owner or f"reconcile-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self._task: asyncio.Task[None] | None = None
        self._never = asyncio.Event()  # a pass is stopped by cancelling it

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
        try:
            stages = tuple(await self.stages())
        except BaseException:
            await self.store.finish_reconcile(self.owner, None, 0, self.clock())
            raise
        if not stages:
            # No sync is on: nothing found could be synced. The watermark moves on; a sync
            # turned on later offers a backfill of its stages.
            await self.store.finish_reconcile(self.owner, started, 0, self.clock())
            log.info("reconcile_nothing_synced")
            return PassResult(0, 0, since, started, 0)
        filters = [
            Filter(MODIFIED, "GTE", str(int(since * 1000))),
            Filter(LIFECYCLE_STAGE, "IN", values=stages),
        ]
        pager = Pager(self.search, self.properties, self.clock, self.alerts)
        found = queued = 0
        cursor: SearchCursor | None = SearchCursor()

        async def wait(seconds: float) -> None:
            await asyncio.sleep(seconds)
            await self.store.take_reconcile(self.owner, self.clock(), self.lease_s)

        try:
            while cursor is not None:
                if found and self.load is not None:
                    await give_way(self.load, BUSY_PAGE_GAP_S, self._never)
                page = await pager.page(filters, cursor, wait, "reconcile")
                events = [search_event(hit, RECONCILE) for hit in page.hits]
                if events:
                    queued += await ingest_in_slices(self.store, events, self.clock)
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
