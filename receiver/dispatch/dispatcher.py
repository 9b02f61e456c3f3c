"""The dispatcher: claim due events, fetch from HubSpot, route, upsert, record.

Two stages run side by side. The *claim loop* leases contacts with due events, fetches
their current properties from HubSpot in one batch read and plans each contact. *Target
workers* (``concurrency`` of them, in :mod:`receiver.dispatch.workers`) take every ready
job, up to the target's batch size, and make one call. A burst fills batches: while more
of it is sure to come (:meth:`Dispatcher.more_coming`: the last claim was full, a claimed
round is being read, or a batch's worth of webhook events came since the last claim),
workers of a target whose calls are metered wait up to a second for a full batch of one
kind; the burst's last round sends what is left. A lone event, or a trickle that never
fills a claim, goes out as soon as a worker is free. A claim is read while the loop
waits, so the next batch gathers meanwhile; but a backlog (a full claim whose oldest
event waited over ``BACKLOG_S``) is read in the background while the loop claims on, up
to ``FULL_READS`` at once, so it drains at the rate the HubSpot pacer allows, not one
round trip at a time. A fresh burst stays on one read at a time, which re-reads fewer contacts.

The claim loop is woken by each webhook commit and each recorded round (a released
contact may have new events), and polls every second for due retries, CLI replays and
other instances' releases. Work due but leased elsewhere waits for those, never spins.

Acknowledging comes first. While webhook commits keep arriving (one within the last
``ingest_pace_s``, 100 ms), the claim loop waits that long after each round that found
work, so a burst is acknowledged at the speed of the ingest path rather than sharing the
process with one small dispatch round per commit; the rounds it does take are full ones.
The events are durable already, and the backlog drains at full speed once the burst
ends. An event arriving on its own still goes out at once: the pause follows a round,
it never precedes the first one.

Leases are not renewed; the wait they cover is bounded instead. At most a few target
calls' worth of jobs per worker are in flight. A job whose lease is half gone before its
remote call starts is dropped unrecorded, to be claimed again; a round that ends after
its lease ran out is not recorded either, as another claimer may own the contact by then
(the upsert is repeated, which is harmless). So two syncs of one contact never overlap
while a target call takes less than half the lease (``LEASE_S``, 60 s, against 15 s HTTP
timeouts). Those checks are on this process's clock, before an await: a process frozen
(or paused) right after them would still write a stale round. So the store checks the
lease again in the transaction that records, and refuses the contacts whose lease this
owner lost; their rounds are logged, counted (``stagesync_rounds_refused``) and dropped,
and the contacts are claimed again. A clean stop releases the leases still held, so a
restart resumes at once. Outcomes are put on jobs and recorded by
:class:`~receiver.dispatch.recorder.RoundRecorder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

from receiver.dispatch.recorder import FailureObserver, RoundRecorder
from receiver.dispatch.resolver import ContactReader, RoundResolver
from receiver.dispatch.work import ContactWork, breathe
from receiver.dispatch.workers import TargetWorkers
from receiver.models import ClaimedContact
from receiver.ops.logging import get_logger
from receiver.ops.metrics import Metrics
from receiver.ops.redaction import SecretScrubber
from receiver.store.base import EventStore
from receiver.sync.retry import RetryPolicy
from receiver.sync.rules import RoutingConfig, plan_contact
from receiver.targets.base import Target

__all__ = ["ContactReader", "Dispatcher"]

log = get_logger("receiver.dispatch.dispatcher")

POLL_S = 1.0
STALL_S = 60.0
HUBSPOT_BATCH = 100
#: Target calls' worth of jobs per worker the claim loop keeps in flight.
CALLS_AHEAD = 2
#: Share of the lease a job may spend before its remote call starts.
START_WITHIN = 0.5
#: HubSpot reads of full batches in flight at once while draining a backlog.
FULL_READS = 3
#: How long the oldest event of a full claim has waited when the claim is a backlog.
BACKLOG_S = 1.0
#: While webhook commits keep coming, at most one claim round per this many seconds.
INGEST_PACE_S = 0.1


class Dispatcher:
    """Turns stored events into target upserts; see the module docstring."""

    def __init__(
        self,
        *,
        store: EventStore,
        target: Target,
        hubspot: ContactReader | None,
        routing: RoutingConfig,
        retry: RetryPolicy,
        mappings: Mapping[str, Mapping[str, str]],
        metrics: Metrics | None = None,
        owner: str | None = None,
        lease_s: float = 60.0,
        concurrency: int = 4,
        max_in_flight: int | None = None,
        clock: Callable[[], float] = time.time,
        ingest_pace_s: float = INGEST_PACE_S,
        live_routing: Callable[[], RoutingConfig] | None = None,
        alerts: FailureObserver | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.hubspot = hubspot
        self.routing = routing
        #: The routing in force, read once per round (the live sync settings); else
        #: ``routing`` always.
        self.live_routing = live_routing
        self.owner = owner or f"stagesync-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self.concurrency = concurrency
        self.clock = clock
        self.claim_size = HUBSPOT_BATCH if hubspot is not None else target.batch_size
        self.max_in_flight = max_in_flight or max(
            self.claim_size, CALLS_AHEAD * concurrency * target.batch_size
        )
        self.last_tick = self._claimed_at = 0.0
        self.ingest_pace_s = ingest_pace_s
        # Real time, not ``clock``: it spaces real waits, and a test's clock may stand still.
        self._last_ingest = -float("inf")
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._in_flight = 0
        #: Whether the last claim was full (more is due), claimed rounds not yet queued,
        #: and webhook events stored since the last claim returned.
        self._claim_full = False
        self._reading = 0
        self._arrived = 0
        self._leased: dict[int, ContactWork] = {}
        self.recorder = RoundRecorder(
            store=store,
            owner=self.owner,
            retry=retry,
            clock=clock,
            release=self._finish,
            # Upstream errors are stored and shown: any configured secret they echo is not.
            scrub=SecretScrubber(secrets),
            metrics=metrics,
            alerts=alerts,
        )
        self.resolver = RoundResolver(hubspot=hubspot, mappings=mappings, fail=self.recorder.fail)
        self.workers = TargetWorkers(
            target=target,
            clock=clock,
            fail=self.recorder.fail,
            record=self.recorder.record,
            give_up=self.recorder.give_up,
            more_coming=self.more_coming,
            renew=self._renew,
            renew_every_s=lease_s / 3,
        )
        if self.workers.bulk_threshold > 0:
            # Room for one bulk group in its job while the next one forms, besides the
            # reads in flight: with less, groups never form and the backlog goes 200 a call.
            self.max_in_flight = max(
                self.max_in_flight, 2 * self.workers.bulk_threshold + FULL_READS * self.claim_size
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._reads: set[asyncio.Task[None]] = set()

    @property
    def target(self) -> Target:
        """The CRM target the workers call."""
        return self.workers.target

    # -- lifecycle -------------------------------------------------------------------

    def wake(self) -> None:
        """Look for work now (called after each webhook commit)."""
        self._last_ingest = time.monotonic()
        self._wake.set()

    def arrived(self, events: int) -> None:
        """Count webhook events just stored (the webhook handler calls it after a commit)."""
        self._arrived += events

    def start(self) -> None:
        """Start the claim loop and the target workers."""
        self.last_tick = self.clock()
        self._tasks = [asyncio.create_task(self._claim_loop(), name="dispatcher-claim")]
        self._tasks += [
            asyncio.create_task(self.workers.run(), name=f"dispatcher-worker-{i}")
            for i in range(self.concurrency)
        ]

    async def stop(self) -> None:
        """Stop, and release the leases of work that was not recorded."""
        while pending := [t for t in (*self._tasks, *self._reads) if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("dispatcher_task_died", task=task.get_name(), error=task.exception())
        self._tasks = []
        now = self.clock()
        held = [i for i, job in self._leased.items() if job.lease_until > now]
        self._leased.clear()
        self.workers.clear()
        self._in_flight = self._reading = self._arrived = 0
        self._claim_full = False
        if held:
            try:
                await self.store.record(self.owner, [], [], held, now)
            except Exception:  # they expire on their own
                log.warning("lease_release_failed", contacts=len(held))

    def running(self, now: float) -> bool:
        """True while the loops run and the claim loop ticked recently."""
        if not self._tasks or any(t.done() for t in self._tasks):
            return False
        return now - self.last_tick < STALL_S

    # -- claim loop ------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self.last_tick = self.clock()
            if self._crowded():
                self.workers.flush()  # staged jobs must not wait for room they hold
                self._room.clear()
                await _wait(self._room, POLL_S)
                continue
            self._wake.clear()
            try:
                found = await self.run_once()
            except Exception:
                log.exception("dispatch_round_failed")
                await asyncio.sleep(POLL_S)
                continue
            if not found:
                await _wait(self._wake, await self._idle_wait())
            elif time.monotonic() - self._last_ingest < self.ingest_pace_s:
                await asyncio.sleep(self.ingest_pace_s)

    async def _idle_wait(self) -> float:
        """How long to sleep when nothing was claimable, unless woken first."""
        try:
            due = await self.store.next_due_at(self.clock())
        except Exception:
            return POLL_S
        if due is None or due <= self._claimed_at:
            # Due now but nothing claimable: those contacts are leased. Our own releases
            # wake the loop; another instance's are seen at the next poll.
            return POLL_S
        return min(POLL_S, max(0.0, due - self.clock()))

    async def run_once(self) -> bool:
        """Claim one round of contacts and plan them; False when nothing was due."""
        while len(self._reads) >= FULL_READS:
            await asyncio.wait(self._reads, return_when=asyncio.FIRST_COMPLETED)
        now = self._claimed_at = self.clock()
        claimed = await self.store.claim(self.owner, now, self.lease_s, self.claim_size)
        self._claim_full = len(claimed) >= self.claim_size
        # Counted after the claim returns: events stored before it are in it (or leased).
        self._arrived = 0
        if not claimed:
            self.workers.flush()  # the backlog is drained: what is staged goes now
            self.workers.nudge()
            return False
        # Counted until its jobs are queued (``_prepare``): workers wait for them.
        self._reading += 1
        try:
            routing = self.live_routing() if self.live_routing is not None else self.routing
            jobs = []
            for n, contact in enumerate(claimed, 1):
                jobs.append(self._plan(contact, now, routing))
                await breathe(n)
        except BaseException:
            self._reading -= 1
            self.workers.nudge()
            raise
        self._in_flight += len(jobs)
        for job in jobs:
            self._leased[job.object_id] = job
        if self._backlog(claimed, now):
            read = asyncio.create_task(
                self._background(jobs, now, routing, backlog=True), name="dispatcher-read"
            )
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)
        else:
            await self._prepare(jobs, now, routing)
        return True

    async def _renew(self, jobs: Sequence[ContactWork]) -> None:
        """Move the leases of ``jobs`` (a call still running) on by ``lease_s``."""
        now = self.clock()
        until = now + self.lease_s
        renewed = set(
            await self.store.renew_leases(self.owner, [j.object_id for j in jobs], now, until)
        )
        for job in jobs:
            if job.object_id in renewed:
                job.lease_until = max(job.lease_until, until)

    def more_coming(self) -> bool:
        """True while more of a due burst is sure to be queued soon: the last claim was
        full, a claimed round is being read, or a batch's worth of events came since the
        last claim; and there is room to claim them."""
        coming = self._claim_full or self._reading > 0 or self._arrived >= self.target.batch_size
        return coming and not self._crowded()

    def _crowded(self) -> bool:
        """True when no more may be claimed. What a backfill holds for the Bulk API
        (bounded on its own, see :mod:`receiver.dispatch.bulk_groups`) does not count, so
        webhooks are claimed beside a Bulk job of minutes."""
        return self._in_flight - self.workers.bulk.backfill_held() >= self.max_in_flight

    def _backlog(self, claimed: Sequence[ClaimedContact], now: float) -> bool:
        if self.hubspot is None or len(claimed) < self.claim_size:
            return False
        oldest = min(e.received_at for c in claimed for e in c.events)
        return now - oldest > BACKLOG_S

    async def _background(
        self, jobs: list[ContactWork], now: float, routing: RoutingConfig, *, backlog: bool = False
    ) -> None:
        try:
            await self._prepare(jobs, now, routing, backlog=backlog)
        except Exception:
            log.exception("dispatch_round_failed")

    async def _prepare(
        self, jobs: list[ContactWork], now: float, routing: RoutingConfig, *, backlog: bool = False
    ) -> None:
        """Fetch and decide ``jobs``, queue the remote work, record what is done.

        The claim counted ``_reading`` up; it goes down here once the jobs are queued.
        """
        try:
            try:
                await self.resolver.resolve(jobs, now, routing)
            finally:
                self._reading -= 1
                # Waiting workers look again once this task yields: by then what was
                # read is queued (no await comes before ``put``).
                self.workers.nudge()
            later = self.clock()
            done = [j for j in jobs if j.op is None]
            remote = [j for j in jobs if j.op is not None]
            late = [j for j in remote if later > j.start_by]
            if late:
                self.recorder.give_up(late, "lease_half_spent_before_call")
                remote = [j for j in remote if not j.finished]
            if remote:
                self.workers.put(remote, backlog=backlog)
            if done:
                await self.recorder.record(done)
        except BaseException:
            # Leases expire and the contacts are claimed again: nothing is lost.
            queued = self.workers.queued()
            self.recorder.give_up([j for j in jobs if j not in queued], "round_failed")
            raise

    def _plan(self, claimed: ClaimedContact, now: float, routing: RoutingConfig) -> ContactWork:
        return ContactWork(
            claimed,
            plan_contact(claimed.events, claimed.state, routing),
            lease_until=now + self.lease_s,
            start_by=now + self.lease_s * START_WITHIN,
        )

    # -- recording -------------------------------------------------------------------

    def _finish(self, jobs: Sequence[ContactWork]) -> None:
        """Free the in-flight slots of ``jobs`` and look for work they may have hidden."""
        for job in jobs:
            if job.finished:
                continue
            job.finished = True
            self._in_flight -= 1
            if self._leased.get(job.object_id) is job:
                del self._leased[job.object_id]
        self._room.set()
        self._wake.set()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as
    # the event is set, and the loop would then outlive stop().
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
