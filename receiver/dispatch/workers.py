"""The dispatcher's target workers: take ready jobs, make one target call, record.

Each of the dispatcher's ``concurrency`` workers runs :meth:`TargetWorkers.run`: it takes
every ready job, up to the target's batch size, drops those whose lease is half gone,
makes one call (deletes one by one, upserts as one upsert or one batch) and puts each
answer on its job. A target with a bulk path (:class:`~receiver.targets.base.BulkTarget`)
gets a backlog and a backfill in bulk: :mod:`receiver.dispatch.bulk_groups` holds their
upserts until a bulk job's worth is ready. Bulk calls renew their leases while they run
(a Bulk job can outlive a lease) and leave one worker to webhook rounds.

What surrounds a call is passed in (the dispatcher's
:class:`~receiver.dispatch.recorder.RoundRecorder`): how an error becomes an outcome
(``fail``), recording a round (``record``) and dropping jobs unrecorded (``give_up``).

A worker waits (up to :data:`HOLD_S`) for a fuller batch only when the wait buys one: no
kind has a full batch ready, more of the same work is sure to come, and (for a webhook's
job) the target's calls are metered (``calls_are_metered``: a CRM's API allowance, not
the webhook target's POST per record or the dry-run's local writes). Backfill and
reconcile jobs come by the thousand and are nobody's webhook waiting, so they always may
wait. A webhook's job waits only while the dispatcher says more is coming
(``more_coming``: its last claim was full, or a claimed round is still being read), that
is, in the middle of a burst that is already due; the last round of the burst sends what
is left at once. A webhook event on its own, or a trickle that never fills a claim, goes
out at once: its claim was not full and nothing is being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from receiver.dispatch.bulk_groups import BulkGroups, searched
from receiver.dispatch.work import ContactWork, event_ref
from receiver.errors import RateLimited, UpstreamError
from receiver.ops.logging import get_logger
from receiver.targets.base import BulkTarget, Target, UpsertResult

#: Longest wait of a worker for a full batch of one kind.
HOLD_S = 1.0

# The dispatcher's logger: these lines were always written under its name.
log = get_logger("receiver.dispatch.dispatcher")

#: Turns an error into outcomes on jobs: ``(jobs, error, api, rate_limit_streak)``.
Fail = Callable[[Sequence[ContactWork], BaseException, str, int], None]
#: Records finished jobs in the store.
Record = Callable[[Sequence[ContactWork]], Awaitable[None]]
#: Drops jobs unrecorded, logging why; their leases expire and they are claimed again.
GiveUp = Callable[[Sequence[ContactWork], str], None]
#: Moves the leases of jobs whose call is still running on by another lease.
Renew = Callable[[Sequence[ContactWork]], Awaitable[None]]


class TargetWorkers:
    """The queue of jobs ready for the target, and the loop that calls the target."""

    def __init__(
        self,
        *,
        target: Target,
        clock: Callable[[], float],
        fail: Fail,
        record: Record,
        give_up: GiveUp,
        more_coming: Callable[[], bool] = lambda: False,
        renew: Renew | None = None,
        renew_every_s: float = 20.0,
    ) -> None:
        self.target = target
        #: Keeps the leases of a bulk call (minutes, in a real org) from running out.
        self.renew = renew
        self.renew_every_s = renew_every_s
        #: True while more of a due burst is sure to reach ``put`` soon.
        self.more_coming = more_coming
        self.clock = clock
        self.fail = fail
        self.record = record
        self.give_up = give_up
        self.ready: deque[ContactWork] = deque()
        threshold = target.bulk_threshold if isinstance(target, BulkTarget) else 0
        #: Upserts held for the bulk path, and the groups ready for it.
        self.bulk = BulkGroups(threshold)
        #: Rate-limit answers from the target in a row.
        self.rate_streak = 0
        self._signal = asyncio.Event()
        #: Workers running, and those in a bulk call.
        self._workers = 0
        self._bulk_calls = 0

    @property
    def bulk_threshold(self) -> int:
        """Records a bulk job takes at least; 0 for a target without a bulk path."""
        return self.bulk.threshold

    def put(self, jobs: Sequence[ContactWork], *, backlog: bool = False) -> None:
        """Queue ``jobs`` for the next free worker; what goes in bulk is held apart
        (:mod:`receiver.dispatch.bulk_groups`)."""
        now = self.bulk.hold(jobs, backlog=backlog)
        if not backlog:
            self.ready.extend(self.bulk.flush())  # a round that is no backlog: no backlog
        self.ready.extend(now)
        self._signal.set()

    def queued(self) -> list[ContactWork]:
        """Every job waiting for a worker, those held for the bulk path included."""
        return [*self.ready, *self.bulk.held()]

    def flush(self) -> None:
        """Send staged upserts the usual way: fewer than ``bulk_threshold`` came."""
        staged = self.bulk.flush()
        if staged:
            self.ready.extend(staged)
            self._signal.set()

    def clear(self) -> None:
        """Forget every queued job (the dispatcher stops)."""
        self.ready.clear()
        self.bulk.clear()

    async def run(self) -> None:
        """One worker: take ready jobs, call the target, record; forever."""
        self._workers += 1
        try:
            while True:
                await self._round()
        finally:
            self._workers -= 1

    def _bulk_free(self) -> bool:
        """True when a bulk group is ready and a worker may take it: bulk calls (minutes
        each, in a real org) leave one worker to webhooks whenever there are two."""
        return bool(self.bulk.ready) and self._bulk_calls < max(1, self._workers - 1)

    async def _round(self) -> None:
        self.ready.extend(self.bulk.release())
        while not self.ready and not self._bulk_free():
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.bulk.gather_left()):
                    await self._signal.wait()
            self.ready.extend(self.bulk.release())
        bulk = self._bulk_free()
        if not bulk:
            await self._fill()
            if not self.ready:
                return  # another worker took them meanwhile
        now = self.clock()
        group: list[ContactWork] = []
        if bulk:
            group = self.bulk.ready.popleft()
            batch = [job for job in group if self._in_time(job, now)]
        else:
            batch = self.take(now)
        if not batch:
            self.bulk.sent(group)
            return
        self._bulk_calls += bulk
        try:
            await self.call(batch, bulk=bulk)
            await self.record(batch)
        except Exception:
            log.exception("target_round_failed", contacts=len(batch))
            # Leases expire and the contacts are claimed again: nothing is lost.
            self.give_up(batch, "target_round_failed")
        finally:
            self._bulk_calls -= bulk
            if bulk:
                self.bulk.sent(group)
                self._signal.set()  # a bulk slot is free again

    def nudge(self) -> None:
        """Have waiting workers look again (``more_coming`` may have turned False)."""
        self._signal.set()

    def _full_kind(self) -> str | None:
        """A kind of upsert with a full batch ready, if any."""
        counts: dict[str, int] = {}
        for job in self.ready:
            if job.op != "upsert" or job.request is None:
                continue
            kind = job.request.kind if self.target.one_kind_per_call else "upsert"
            counts[kind] = counts.get(kind, 0) + 1
            if counts[kind] >= self.target.batch_size:
                return kind
        return None

    def _may_wait(self) -> bool:
        """True while every ready job may wait for company and no batch is full."""
        burst = self.target.calls_are_metered and self.more_coming()
        for job in self.ready:
            if job.op != "upsert" or job.request is None:
                return False
            if not burst and not searched(job):
                return False
        return self._full_kind() is None

    async def _fill(self) -> None:
        """While every ready job may wait, wait (a while) for a full batch of one kind."""
        deadline = time.monotonic() + HOLD_S
        while self.ready and self._may_wait():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._signal.wait()
        self._signal.set()  # wake the other workers for what is left

    def take(self, now: float) -> list[ContactWork]:
        """Up to ``batch_size`` ready jobs, dropping those whose lease is half gone.

        For a target whose calls each carry one kind (Salesforce collections, Zoho
        modules), the upserts taken are all of one kind: one with a full batch ready if
        there is one, else the kind of the first job ready; the others stay queued, in
        order, for the next worker. A mixed take would cost that target two half-full
        calls where one full one can go.
        """
        batch: list[ContactWork] = []
        passed: list[ContactWork] = []
        kind = self._full_kind() if self.target.one_kind_per_call else None
        while self.ready and len(batch) < self.target.batch_size:
            job = self.ready.popleft()
            if not self._in_time(job, now):
                continue
            if self.target.one_kind_per_call and job.op == "upsert" and job.request:
                kind = kind or job.request.kind
                if job.request.kind != kind:
                    passed.append(job)
                    continue
            batch.append(job)
        self.ready.extendleft(reversed(passed))
        if self.ready:
            self._signal.set()  # what was passed over is another worker's
        return batch

    def _in_time(self, job: ContactWork, now: float) -> bool:
        """False, after giving the job up, when half its lease went by in the queue."""
        if now > job.start_by:
            self.give_up([job], "lease_half_spent_in_queue")
            return False
        return True

    async def call(self, batch: list[ContactWork], *, bulk: bool = False) -> None:
        """Make the target calls of ``batch`` and put each answer on its job; ``bulk``
        sends its upserts as one ``bulk_upsert``."""
        deletes = [j for j in batch if j.op == "delete"]
        upserts = [j for j in batch if j.op == "upsert"]
        if deletes:
            await asyncio.gather(*(self._delete(j) for j in deletes))
        if not upserts:
            return
        requests = [j.request for j in upserts if j.request is not None]
        try:
            if bulk and isinstance(self.target, BulkTarget):
                log.info("bulk_upsert_started", contacts=len(requests))
                async with self._leases_kept(upserts):
                    results: list[UpsertResult | UpstreamError] = await self.target.bulk_upsert(
                        requests
                    )
            elif len(requests) == 1:
                results = [await self.target.upsert(requests[0])]
            else:
                results = await self.target.upsert_batch(requests)
        except Exception as exc:
            self._fail(upserts, exc)
            return
        # One answer is one rate-limit step, however many records it refused.
        if any(isinstance(r, RateLimited) for r in results):
            self.rate_streak += 1
        for job, result in zip(upserts, results, strict=True):
            if isinstance(result, UpstreamError):
                self.fail([job], result, "target", self.rate_streak)
            else:
                self._synced(job, result)
        if all(not isinstance(r, RateLimited) for r in results):
            self.rate_streak = 0

    @contextlib.asynccontextmanager
    async def _leases_kept(self, jobs: Sequence[ContactWork]) -> AsyncIterator[None]:
        """Renew ``jobs``' leases every ``renew_every_s`` while the block runs: a Bulk job
        outlives a lease, and a round recorded after its lease ran out is dropped."""
        if self.renew is None:
            yield
            return
        renew = self.renew

        async def keep() -> None:
            while True:
                await asyncio.sleep(self.renew_every_s)
                try:
                    await renew(jobs)
                except Exception:  # the record's fence still refuses a lost lease
                    log.warning("lease_renewal_failed", contacts=len(jobs))

        task = asyncio.create_task(keep(), name="dispatcher-lease-keeper")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fail(self, jobs: Sequence[ContactWork], exc: BaseException) -> None:
        if isinstance(exc, RateLimited):
            self.rate_streak += 1
        self.fail(jobs, exc, "target", self.rate_streak)

    def _synced(self, job: ContactWork, result: UpsertResult) -> None:
        job.synced(result)
        log.info(
            "event_synced",
            event_id=job.result[-1].event_id,
            contact_id=job.object_id,
            kind=job.result[-1].target_kind,
            target_id=result.target_id,
            created=result.created,
            reason=job.reason,
        )

    async def _delete(self, job: ContactWork) -> None:
        event = job.plan.delete
        assert event is not None
        try:
            count = await self.target.delete(str(job.object_id), event=event_ref(event))
        except Exception as exc:
            self._fail([job], exc)
            return
        job.deleted()
        log.info("contact_deleted", event_id=event.id, contact_id=job.object_id, records=count)
