"""The dispatcher's target workers: take ready jobs, make one target call, record.

Each of the dispatcher's ``concurrency`` workers runs :meth:`TargetWorkers.run`: it takes
every ready job, up to the target's batch size, drops those whose lease is half gone,
makes one call (deletes one by one, upserts as one upsert or one batch) and puts each
answer on its job.

Backfill and reconcile jobs (*bulk* jobs) come by the thousand and are nobody's webhook
waiting: while only they are ready, a worker waits up to :data:`BULK_HOLD_S` for a full
batch of one kind (a Salesforce collection holds one object type), so a backfill costs
the CRM's API budget about one call per batch size. A webhook's job never waits, and
takes the worker as before. The dispatcher owns what surrounds a call: how an error becomes an
outcome (``fail``), recording a round (``record``) and dropping jobs unrecorded
(``give_up``); it passes those in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from receiver.dispatch.work import Job
from receiver.errors import RateLimited, UpstreamError
from receiver.ops.logging import get_logger
from receiver.sync.rules import SEARCH_TYPES
from receiver.targets.base import Target, UpsertResult

#: Longest wait of bulk jobs for a full batch of their kind.
BULK_HOLD_S = 1.0

# The dispatcher's logger: these lines were always written under its name.
log = get_logger("receiver.dispatch.dispatcher")

#: Turns an error into outcomes on jobs: ``(jobs, error, api, rate_limit_streak)``.
Fail = Callable[[Sequence[Job], BaseException, str, int], None]
#: Records finished jobs in the store.
Record = Callable[[Sequence[Job]], Awaitable[None]]
#: Drops jobs unrecorded, logging why; their leases expire and they are claimed again.
GiveUp = Callable[[Sequence[Job], str], None]


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
    ) -> None:
        self.target = target
        self.clock = clock
        self.fail = fail
        self.record = record
        self.give_up = give_up
        self.ready: deque[Job] = deque()
        #: Rate-limit answers from the target in a row.
        self.rate_streak = 0
        self._signal = asyncio.Event()

    def put(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` for the next free worker."""
        self.ready.extend(jobs)
        self._signal.set()

    async def run(self) -> None:
        """One worker: take ready jobs, call the target, record; forever."""
        while True:
            while not self.ready:
                self._signal.clear()
                await self._signal.wait()
            await self._fill()
            if not self.ready:
                continue  # another worker took them meanwhile
            batch: list[Job] = []
            now = self.clock()
            for job in self._take():
                if now > job.start_by:
                    self.give_up([job], "lease_half_spent_in_queue")
                else:
                    batch.append(job)
            if not batch:
                continue
            try:
                await self.call(batch)
                await self.record(batch)
            except Exception:
                log.exception("target_round_failed", contacts=len(batch))
                # Leases expire and the contacts are claimed again: nothing is lost.
                self.give_up(batch, "target_round_failed")

    def _full_kind(self) -> bool:
        """True when some kind has a full batch of bulk jobs ready, or a job is not bulk."""
        counts: dict[str, int] = {}
        for job in self.ready:
            kind = _bulk_kind(job)
            if kind is None:
                return True
            counts[kind] = counts.get(kind, 0) + 1
            if counts[kind] >= self.target.batch_size:
                return True
        return False

    async def _fill(self) -> None:
        """While only bulk jobs are ready, wait (a while) for a full batch of one kind."""
        deadline = time.monotonic() + BULK_HOLD_S
        while self.ready and not self._full_kind():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._signal.wait()
        self._signal.set()  # wake the other workers for what is left

    def _take(self) -> list[Job]:
        """The next batch: up to the batch size in order; bulk jobs of one kind only."""
        size = self.target.batch_size
        kind = _bulk_kind(self.ready[0])
        if kind is None:
            return [self.ready.popleft() for _ in range(min(size, len(self.ready)))]
        taken: list[Job] = []
        kept: deque[Job] = deque()
        while self.ready and len(taken) < size:
            job = self.ready.popleft()
            (taken if _bulk_kind(job) == kind else kept).append(job)
        kept.extend(self.ready)
        self.ready = kept
        return taken

    async def call(self, batch: list[Job]) -> None:
        """Make the target calls of ``batch`` and put each answer on its job."""
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

    def _fail(self, jobs: Sequence[Job], exc: BaseException) -> None:
        if isinstance(exc, RateLimited):
            self.rate_streak += 1
        self.fail(jobs, exc, "target", self.rate_streak)

    def _synced(self, job: Job, result: UpsertResult) -> None:
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

    async def _delete(self, job: Job) -> None:
        event = job.plan.delete
        assert event is not None
        try:
            count = await self.target.delete(str(job.object_id))
        except Exception as exc:
            self._fail([job], exc)
            return
        job.deleted()
        log.info("contact_deleted", event_id=event.id, contact_id=job.object_id, records=count)


def _bulk_kind(job: Job) -> str | None:
    """The record kind of a backfill or reconcile upsert; None for any other job."""
    carrier = job.plan.carrier
    if job.op != "upsert" or carrier is None or carrier.subscription_type not in SEARCH_TYPES:
        return None
    return job.request.kind if job.request is not None else None
