"""The dispatcher: claim due events, fetch from HubSpot, route, upsert, record.

Two stages run side by side. The *claim loop* leases contacts with due events, fetches
their current properties from HubSpot in one batch read (one call at a time) and plans
each contact. *Target workers* (``concurrency`` of them) take every ready job, up to the
target's batch size, and make one call. Batching comes only from what piles up while a
call is in flight: a lone event goes out at once. The claim loop is woken the moment a
webhook commit lands, and polls every second for due retries and CLI replays.

:func:`classify` is the one place where an error becomes retry or ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from receiver.exceptions import PermanentError, RateLimited, TransientError, UpstreamError
from receiver.jobs import Job
from receiver.logging import get_logger
from receiver.mapping import LIFECYCLE_STAGE, hubspot_properties, map_fields
from receiver.metrics import Metrics
from receiver.models import ClaimedContact, ContactUpdate, Outcome, StoredEvent
from receiver.retry import RetryPolicy
from receiver.rules import RoutingConfig, decide, plan_contact, stage_from_webhook
from receiver.rules import webhook_properties as carried_properties
from receiver.store.base import EventStore
from receiver.targets.base import Target, UpsertRequest, UpsertResult

log = get_logger("receiver.dispatcher")

POLL_S = 1.0
STALL_S = 60.0
HUBSPOT_BATCH = 100
MAX_IN_FLIGHT = 2000


class ContactReader(Protocol):
    """Reads current contact properties (the HubSpot client)."""

    async def batch_read(
        self, ids: Sequence[int], properties: Sequence[str], now: float
    ) -> dict[int, dict[str, str | None]]:
        """Properties of the contacts that exist; missing ones are absent."""
        ...


def classify(
    exc: BaseException,
    event: StoredEvent,
    attempt_floor: int,
    policy: RetryPolicy,
    now: float,
    rate_streak: int = 1,
) -> Outcome:
    """Map an error on ``event``'s dispatch to its outcome: delay, retry or ``failed``.

    A rate limit uses up no attempt and only delays (its own backoff grows with
    ``rate_streak``, the count of rate-limit answers in a row). Other transient errors
    use an attempt and back off, until the budget is spent. Anything unexpected is
    treated as transient, so a bug can never drop an event.
    """
    if isinstance(exc, RateLimited):
        return Outcome(
            event_id=event.id,
            state="retrying",
            error_code=exc.code,
            error_message=exc.message,
            next_attempt_at=now + policy.delay(rate_streak, exc.retry_after),
            counts_attempt=False,
        )
    if isinstance(exc, PermanentError):
        return Outcome(
            event_id=event.id, state="failed", error_code=exc.code, error_message=exc.message
        )
    if isinstance(exc, UpstreamError):
        code, message = exc.code, exc.message
    else:
        code, message = "internal_error", f"{type(exc).__name__}: {exc}"
    attempt = event.attempts + 1 - attempt_floor
    if policy.exhausted(attempt):
        return Outcome(
            event_id=event.id,
            state="failed",
            error_code=code,
            error_message=f"{message} (gave up after {attempt} attempts)",
        )
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    return Outcome(
        event_id=event.id,
        state="retrying",
        error_code=code,
        error_message=message,
        next_attempt_at=now + policy.delay(attempt, retry_after),
    )


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.target = target
        self.hubspot = hubspot
        self.routing = routing
        self.retry = retry
        self.mappings = mappings
        self.metrics = metrics
        self.owner = owner or f"stagesync-{uuid.uuid4().hex[:12]}"
        self.lease_s = lease_s
        self.concurrency = concurrency
        self.clock = clock
        self.properties = hubspot_properties(*mappings.values())
        self.claim_size = HUBSPOT_BATCH if hubspot is not None else target.batch_size
        self.last_tick = 0.0
        self._wake = asyncio.Event()
        self._ready: deque[Job] = deque()
        self._ready_signal = asyncio.Event()
        self._room = asyncio.Event()
        self._in_flight = 0
        self._rate_streak = 0
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------

    def wake(self) -> None:
        """Look for work now (called after each webhook commit)."""
        self._wake.set()

    def start(self) -> None:
        """Start the claim loop and the target workers."""
        self.last_tick = self.clock()
        self._tasks = [asyncio.create_task(self._claim_loop(), name="dispatcher-claim")]
        self._tasks += [
            asyncio.create_task(self._worker(), name=f"dispatcher-worker-{i}")
            for i in range(self.concurrency)
        ]

    async def stop(self) -> None:
        """Stop; leased work that was not recorded is claimed again after its lease."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def running(self, now: float) -> bool:
        """True while the loops run and the claim loop ticked recently."""
        if not self._tasks or any(t.done() for t in self._tasks):
            return False
        return now - self.last_tick < STALL_S

    # -- claim loop ------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            self.last_tick = self.clock()
            if self._in_flight >= MAX_IN_FLIGHT:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), POLL_S)
                continue
            self._wake.clear()
            try:
                found = await self.run_once()
            except Exception:
                log.exception("dispatch_round_failed")
                await asyncio.sleep(POLL_S)
                continue
            if found:
                continue
            timeout = POLL_S
            with contextlib.suppress(Exception):
                due = await self.store.next_due_at(self.clock())
                if due is not None:
                    timeout = min(POLL_S, max(0.0, due - self.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def run_once(self) -> bool:
        """Claim one round of contacts and plan them; False when nothing was due."""
        now = self.clock()
        claimed = await self.store.claim(self.owner, now, self.lease_s, self.claim_size)
        if not claimed:
            return False
        self._in_flight += len(claimed)
        jobs = [self._plan(c) for c in claimed]
        await self._resolve(jobs, now)
        done = [j for j in jobs if j.op is None]
        remote = [j for j in jobs if j.op is not None]
        if done:
            await self._record(done)
        if remote:
            self._ready.extend(remote)
            self._ready_signal.set()
        return True

    def _plan(self, claimed: ClaimedContact) -> Job:
        return Job(claimed, plan_contact(claimed.events, claimed.state, self.routing))

    async def _resolve(self, jobs: list[Job], now: float) -> None:
        """Fetch current properties for the jobs that sync, and decide each one."""
        syncing = [j for j in jobs if j.plan.carrier is not None and j.plan.delete is None]
        if not syncing:
            return
        fetched: dict[int, dict[str, str | None]] | None = None
        if self.hubspot is not None:
            try:
                fetched = await self.hubspot.batch_read(
                    [j.object_id for j in syncing], self.properties, now
                )
                self._rate_streak = 0
            except Exception as exc:
                self._fail_jobs(syncing, exc)
                return
        for job in syncing:
            carrier = job.plan.carrier
            assert carrier is not None
            state = job.claimed.state
            if fetched is not None:
                props = fetched.get(job.object_id)
                if props is None:
                    job.result.append(Outcome(carrier.id, "skipped", reason="not-found"))
                    continue
                stage = props.get(LIFECYCLE_STAGE) or None
            else:
                events = (*job.plan.coalesced, carrier)
                props = carried_properties(events)
                stage = stage_from_webhook(events, state)
            job.stage = stage
            decision = decide(stage, state.kind if state else None, self.routing)
            if decision.kind is None:
                job.result.append(
                    Outcome(carrier.id, "skipped", reason=decision.reason, stage=stage)
                )
                if decision.reason == "stage-not-synced":
                    job.contact = ContactUpdate(
                        job.object_id,
                        state.kind if state else None,
                        state.target_id if state else None,
                        stage,
                        job.applied_at(carrier),
                    )
                continue
            job.reason = decision.reason
            fields = map_fields(self.mappings[decision.kind], props)
            job.request = UpsertRequest(decision.kind, str(job.object_id), fields)

    def _fail_jobs(self, jobs: Sequence[Job], exc: BaseException) -> None:
        if isinstance(exc, RateLimited):
            self._rate_streak += 1
        now = self.clock()
        for job in jobs:
            event = job.main_event
            assert event is not None
            job.result.append(
                classify(exc, event, event.attempt_floor, self.retry, now, self._rate_streak)
            )
            log.warning(
                "dispatch_retry" if job.result[-1].state == "retrying" else "dispatch_failed",
                event_id=event.id,
                contact_id=job.object_id,
                error_code=job.result[-1].error_code,
            )

    # -- target workers --------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            while not self._ready:
                self._ready_signal.clear()
                await self._ready_signal.wait()
            batch: list[Job] = []
            while self._ready and len(batch) < self.target.batch_size:
                batch.append(self._ready.popleft())
            try:
                await self._call_target(batch)
                await self._record(batch)
            except Exception:
                log.exception("target_round_failed", contacts=len(batch))
                # Leases expire and the contacts are claimed again: nothing is lost.
                self._in_flight -= len(batch)
                self._room.set()

    async def _call_target(self, batch: list[Job]) -> None:
        deletes = [j for j in batch if j.op == "delete"]
        upserts = [j for j in batch if j.op == "upsert"]
        if deletes:
            await asyncio.gather(*(self._delete(j) for j in deletes))
        if not upserts:
            return
        requests = [j.request for j in upserts if j.request is not None]
        try:
            if len(requests) == 1:
                results: list[UpsertResult | UpstreamError] = [
                    await self.target.upsert(requests[0])
                ]
            else:
                results = await self.target.upsert_batch(requests)
        except Exception as exc:
            self._fail_jobs(upserts, exc)
            return
        for job, result in zip(upserts, results, strict=True):
            if isinstance(result, UpstreamError):
                self._fail_jobs([job], result)
            else:
                self._synced(job, result)
        if any(not isinstance(r, RateLimited) for r in results):
            self._rate_streak = 0

    def _synced(self, job: Job, result: UpsertResult) -> None:
        carrier = job.plan.carrier
        assert carrier is not None and job.request is not None
        kind = job.request.kind
        job.result.append(
            Outcome(
                carrier.id,
                "synced",
                reason=job.reason,
                stage=job.stage,
                target_kind=kind,
                target_id=result.target_id,
            )
        )
        job.contact = ContactUpdate(
            job.object_id, kind, result.target_id, job.stage, job.applied_at(carrier)
        )
        log.info(
            "event_synced",
            event_id=carrier.id,
            contact_id=job.object_id,
            kind=kind,
            target_id=result.target_id,
            created=result.created,
            reason=job.reason,
        )

    async def _delete(self, job: Job) -> None:
        event = job.plan.delete
        assert event is not None
        try:
            count = await self.target.delete(str(job.object_id))
        except Exception as exc:
            self._fail_jobs([job], exc)
            return
        job.result.append(Outcome(event.id, "synced"))
        job.contact = ContactUpdate(job.object_id, None, None, None, job.applied_at(event))
        log.info("contact_deleted", event_id=event.id, contact_id=job.object_id, records=count)

    # -- recording -------------------------------------------------------------------

    async def _record(self, jobs: Sequence[Job]) -> None:
        outcomes: list[Outcome] = []
        contacts: list[ContactUpdate] = []
        for job in jobs:
            outcomes += job.prior()
            outcomes += job.result
            if job.contact is not None:
                contacts.append(job.contact)
        now = self.clock()
        await self.store.record(
            self.owner, outcomes, contacts, [j.object_id for j in jobs], now
        )
        self._in_flight -= len(jobs)
        self._room.set()
        if self.metrics is not None:
            self._observe(jobs, outcomes, now)

    def _observe(self, jobs: Sequence[Job], outcomes: Sequence[Outcome], now: float) -> None:
        assert self.metrics is not None
        received: dict[int, float] = {
            e.id: e.received_at for j in jobs for e in j.claimed.events
        }
        for o in outcomes:
            self.metrics.outcomes.labels(state=o.state, reason=o.reason or "").inc()
            if o.state == "retrying":
                self.metrics.retries.inc()
            elif o.state == "synced" and o.event_id in received:
                self.metrics.sync_seconds.observe(max(0.0, now - received[o.event_id]))


def describe(dispatcher: Dispatcher) -> dict[str, Any]:
    """A few internals for debugging."""
    return {"owner": dispatcher.owner, "in_flight": dispatcher._in_flight}
