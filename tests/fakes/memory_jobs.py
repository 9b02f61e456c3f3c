"""Backfill jobs and reconciliation state for the in-memory store, with the real stores'
rules: one running job, leases by owner and expiry, a cancel that ends an unleased job."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from receiver.models import BackfillJob, EventFilter, ReconcileState, StoredEvent
from receiver.store.job_rows import BACKFILL_TYPE


@dataclass
class _JobsState:
    backfills: dict[int, BackfillJob] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    reconcile: ReconcileState = field(default_factory=lambda: ReconcileState(None, None, 0))
    reconcile_owner: str | None = None
    reconcile_until: float = 0.0


class InMemoryJobs:
    """The job methods of the ``EventStore`` protocol, kept in memory."""

    if TYPE_CHECKING:  # the store's own

        async def list_events(
            self, flt: EventFilter, limit: int, before_id: int | None = None
        ) -> list[StoredEvent]: ...

    @property
    def _jobs(self) -> _JobsState:
        state: _JobsState = self.__dict__.setdefault("_jobs_state", _JobsState())
        return state

    def _running(self) -> BackfillJob | None:
        return next((j for j in self._jobs.backfills.values() if j.state == "running"), None)

    async def create_backfill(self, stages: Sequence[str], now: float) -> BackfillJob | None:
        if self._running() is not None:
            return None
        job = BackfillJob(next(self._jobs.ids), "running", tuple(stages), 0, 0, 0, 0, {}, False,
                          None, now, None)  # fmt: skip
        self._jobs.backfills[job.id] = job
        return job

    async def take_backfill(self, owner: str, now: float, lease_s: float) -> BackfillJob | None:
        job = self._running()
        if job is None or not (job.owner in (None, owner) or job.lease_until < now):
            return None
        job = self._jobs.backfills[job.id] = replace(job, owner=owner, lease_until=now + lease_s)
        return job

    async def advance_backfill(
        self,
        job_id: int,
        owner: str,
        counts: tuple[int, int, int, int],
        cursor: dict[str, Any],
        now: float,
        lease_s: float,
    ) -> BackfillJob | None:
        job = self._jobs.backfills.get(job_id)
        if job is None or job.owner != owner or job.state != "running":
            return None
        found, queued, pages, calls = counts
        job = replace(job, found=found, queued=queued, pages=pages, calls=calls,
                      cursor=dict(cursor), lease_until=now + lease_s)  # fmt: skip
        self._jobs.backfills[job_id] = job
        return job

    async def finish_backfill(
        self, job_id: int, owner: str, state: str, error: str | None, now: float
    ) -> None:
        job = self._jobs.backfills.get(job_id)
        if job is not None and job.owner == owner and job.state == "running":
            self._jobs.backfills[job_id] = replace(
                job, state=state, error=error, finished_at=now, owner=None, lease_until=0.0
            )

    async def release_backfill(self, job_id: int, owner: str) -> None:
        job = self._jobs.backfills.get(job_id)
        if job is not None and job.owner == owner:
            self._jobs.backfills[job_id] = replace(job, owner=None, lease_until=0.0)

    async def cancel_backfill(self, job_id: int, now: float) -> BackfillJob | None:
        job = self._jobs.backfills.get(job_id)
        if job is None or job.state != "running":
            return job
        job = replace(job, cancel_requested=True)
        if job.lease_until < now:
            job = replace(job, state="cancelled", finished_at=now, owner=None, lease_until=0.0)
        self._jobs.backfills[job_id] = job
        return job

    async def get_backfill(self, job_id: int) -> BackfillJob | None:
        return self._jobs.backfills.get(job_id)

    async def list_backfills(self, limit: int) -> list[BackfillJob]:
        return sorted(self._jobs.backfills.values(), key=lambda j: -j.id)[:limit]

    async def backfill_outcomes(self, job: BackfillJob) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in await self.list_events(EventFilter(since=job.started_at), 10**9):
            if event.subscription_type == BACKFILL_TYPE:
                counts[event.state] = counts.get(event.state, 0) + 1
        return counts

    async def take_reconcile(self, owner: str, now: float, lease_s: float) -> ReconcileState | None:
        jobs = self._jobs
        if not (jobs.reconcile_owner in (None, owner) or jobs.reconcile_until < now):
            return None
        jobs.reconcile_owner, jobs.reconcile_until = owner, now + lease_s
        return jobs.reconcile

    async def finish_reconcile(
        self, owner: str, watermark: float | None, found: int, now: float
    ) -> None:
        jobs = self._jobs
        if jobs.reconcile_owner != owner:
            return
        mark = watermark if watermark is not None else jobs.reconcile.watermark
        jobs.reconcile = ReconcileState(mark, now, found)
        jobs.reconcile_owner, jobs.reconcile_until = None, 0.0

    async def reconcile_state(self) -> ReconcileState:
        return self._jobs.reconcile
