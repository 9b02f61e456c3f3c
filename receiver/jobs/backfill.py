"""Backfill: queue every contact in the given lifecycle stages, from HubSpot's search.

A job is a row in the database (see ``backfills`` in the store). Starting one only
inserts that row, so the API, the CLI and (later) a sync-settings change start it the
same way, in any process. A :class:`BackfillRunner` in each serving instance takes the
running job when no other instance holds its lease and pages through the search,
writing each page's contacts as ``stagesync.backfill`` events through the store's
ingest (the webhooks' group commit), then storing the counts and the cursor with its
lease renewed. So a restart goes on from the last page stored, a dead runner's job is
taken over when its lease expires, and a cancel stops the job after the page in flight,
whose events stay queued. A job gives way to webhooks: it commits in slices, and spaces
its pages while webhooks keep coming (see :mod:`receiver.jobs.yielding`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from receiver.errors import UpstreamError
from receiver.hubspot.search import ContactSearch, Filter, SearchCursor
from receiver.jobs.events import search_event
from receiver.jobs.paging import Pager, Stopped, TokenAlerts
from receiver.jobs.yielding import BUSY_PAGE_GAP_S, WebhookLoad, give_way, ingest_in_slices
from receiver.models import BackfillJob
from receiver.ops.logging import get_logger
from receiver.ops.metrics import Metrics
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.sync.mapping import LIFECYCLE_STAGE
from receiver.sync.rules import BACKFILL

log = get_logger("receiver.jobs.backfill")

LEASE_S = 60.0
POLL_S = 1.0
#: Longest sleep between two renewals of the lease (and looks for a cancel).
WAIT_STEP_S = 5.0
#: How long a clean stop lets the page in flight finish before cancelling it.
STOP_GRACE_S = 10.0
MAX_STAGES = 50


class BackfillRefused(Exception):
    """A backfill cannot start; ``status`` and ``code`` are the API's answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


TOKEN_REQUIRED = (
    "Backfill and reconciliation read HubSpot's search API and need a private-app token:"
    " set STAGESYNC_HUBSPOT_ACCESS_TOKEN."
)


#: Reads the stages of the syncs that are on in the sync settings in force (the saved
#: ones, else the configured ones): a backfill's default and reconciliation's filter. A
#: read, not a list taken at start-up, so a change saved on any instance applies.
SyncedStages = Callable[[], Awaitable[Sequence[str]]]


def backfill_stages(synced: Sequence[str], stages: Sequence[str] | None) -> list[str]:
    """The stages a backfill takes (default: all ``synced`` ones); refuses any other stage."""
    if not synced:
        raise BackfillRefused(
            400,
            "nothing_synced",
            "Neither the lead nor the contact sync is on with any stage: nothing to backfill.",
        )
    if not stages:
        return list(synced)
    wanted = list(dict.fromkeys(stages))
    unknown = [s for s in wanted if s not in synced]
    if unknown or len(wanted) > MAX_STAGES:
        names = ", ".join(repr(s) for s in unknown[:5])
        raise BackfillRefused(
            400,
            "stage_not_synced",
            f"Only stages that sync can be backfilled; {names} is in no sync that is on"
            f" ({', '.join(synced)}).",
        )
    return wanted


async def start_backfill(
    store: EventStore,
    settings: Settings,
    stages: Sequence[str] | None,
    now: float,
    synced: SyncedStages,
) -> BackfillJob:
    """Insert a running job for a serving instance to pick up; refuses as the SPEC says.

    ``synced`` gives the stages of the syncs on in the settings in force: the default,
    and the only stages a backfill may take.
    """
    if not settings.hubspot_token:
        raise BackfillRefused(400, "hubspot_token_required", TOKEN_REQUIRED)
    chosen = backfill_stages(await synced(), stages)
    job = await store.create_backfill(chosen, now)
    if job is None:
        running = [j for j in await store.list_backfills(1) if j.state == "running"]
        which = f" (backfill {running[0].id})" if running else ""
        raise BackfillRefused(
            409,
            "backfill_running",
            f"A backfill is running already{which}; cancel it or wait until it ends.",
        )
    log.info("backfill_started", job=job.id, stages=list(chosen))
    return job


def _cursor(raw: dict[str, Any]) -> SearchCursor:
    """The stored cursor of a job (``{}`` before its first page) as the search takes it."""

    def number(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) else None

    after = raw.get("after")
    return SearchCursor(
        window_after_id=number("window_after_id"),
        after=after if isinstance(after, str) else None,
        last_id=number("last_id"),
    )


class BackfillRunner:
    """Runs the running backfill whenever this instance can take its lease."""

    def __init__(
        self,
        *,
        store: EventStore,
        search: ContactSearch,
        properties: Sequence[str],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        lease_s: float = LEASE_S,
        poll_s: float = POLL_S,
        load: WebhookLoad | None = None,
        busy_gap_s: float = BUSY_PAGE_GAP_S,
        alerts: TokenAlerts | None = None,
    ) -> None:
        self.store = store
        self.alerts = alerts
        #: The webhook traffic the job gives way to (None: it never waits for it), and
        #: its wait before each page while that traffic is busy.
        self.load = load
        self.busy_gap_s = busy_gap_s
        self.search = search
        self.properties = list(dict.fromkeys([LIFECYCLE_STAGE, *properties]))
        self.metrics = metrics
        self.clock = clock
        self.owner = owner or f"backfill-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start looking for a job to run."""
        self._task = asyncio.create_task(self._loop(), name="backfill-runner")

    def wake(self) -> None:
        """Look for a job now (a job was just started)."""
        self._wake.set()

    async def stop(self) -> None:
        """Let the page in flight finish (a few seconds at most), then release the job."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if await self._takeable():
                    job = await self.store.take_backfill(self.owner, self.clock(), self.lease_s)
                    if job is not None:
                        await self.run(job)
                        continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("backfill_runner_failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    async def _takeable(self) -> bool:
        # A read first: on SQLite even an UPDATE that matches nothing takes the write lock,
        # and every instance polls every second.
        latest = await self.store.list_backfills(1)
        if not latest or latest[0].state != "running":
            return False
        job = latest[0]
        return job.owner in (None, self.owner) or job.lease_until < self.clock()

    async def run(self, job: BackfillJob) -> BackfillJob | None:
        """Run ``job`` (leased by this owner) to its end, or until stopped; the job after."""
        pager = Pager(self.search, self.properties, self.clock, self.alerts)
        pager.calls = job.calls
        filters = [Filter(LIFECYCLE_STAGE, "IN", values=job.stages)]
        cursor = _cursor(job.cursor)
        found, queued, pages = job.found, job.queued, job.pages
        name = f"backfill:{job.id}"
        log.info("backfill_running", job=job.id, resumed_at=job.cursor or None)

        async def wait(seconds: float) -> None:
            # Sleep in steps, renewing the lease and looking for a cancel or a stop.
            end = self.clock() + seconds
            while True:
                left = end - self.clock()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, WAIT_STEP_S)):
                        await self._stopping.wait()
                current = await self._advance(job.id, (found, queued, pages, pager.calls), cursor)
                if self._stopping.is_set() or current.cancel_requested:
                    raise Stopped

        try:
            while True:
                if job.cancel_requested:
                    await self._finish(job.id, "cancelled", None)
                    return await self.store.get_backfill(job.id)
                if self._stopping.is_set():
                    raise Stopped
                if self.load is not None:
                    await give_way(self.load, self.busy_gap_s, self._stopping)
                    if self._stopping.is_set():
                        raise Stopped
                page = await pager.page(filters, cursor, wait, name)
                events = [search_event(hit, BACKFILL, name) for hit in page.hits]
                accepted = 0
                if events:
                    accepted = await ingest_in_slices(self.store, events, self.clock)
                found += len(page.hits)
                queued += accepted
                pages += 1
                if self.metrics is not None and accepted:
                    self.metrics.backfill_contacts.inc(accepted)
                done = page.next is None
                cursor = page.next or cursor
                job = await self._advance(job.id, (found, queued, pages, pager.calls), cursor)
                if done:
                    await self._finish(job.id, "done", None)
                    log.info("backfill_done", job=job.id, found=found, queued=queued)
                    return await self.store.get_backfill(job.id)
        except Stopped:
            current = await self.store.get_backfill(job.id)
            if current is not None and current.cancel_requested:
                await self._finish(job.id, "cancelled", None)
                log.info("backfill_cancelled", job=job.id, found=found, queued=queued)
            else:
                await self.store.release_backfill(job.id, self.owner)
                log.info("backfill_paused", job=job.id, found=found, queued=queued)
            return await self.store.get_backfill(job.id)
        except UpstreamError as exc:
            await self._finish(job.id, "failed", f"{exc.code}: {exc.message}")
            log.warning("backfill_failed", job=job.id, error_code=exc.code)
            return await self.store.get_backfill(job.id)
        except _LeaseLost:
            log.warning("backfill_lease_lost", job=job.id)
            return None

    async def _advance(
        self, job_id: int, counts: tuple[int, int, int, int], cursor: SearchCursor
    ) -> BackfillJob:
        job = await self.store.advance_backfill(
            job_id, self.owner, counts, asdict(cursor), self.clock(), self.lease_s
        )
        if job is None:
            raise _LeaseLost
        return job

    async def _finish(self, job_id: int, state: str, error: str | None) -> None:
        await self.store.finish_backfill(job_id, self.owner, state, error, self.clock())


class _LeaseLost(Exception):
    """Another owner has the job (this one stalled past its lease), or it ended."""
