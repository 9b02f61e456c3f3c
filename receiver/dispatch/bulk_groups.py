"""Upserts held back for a target's bulk path until a bulk job's worth is ready.

A target with a bulk path (:class:`~receiver.targets.base.BulkTarget`, Salesforce's Bulk
API 2.0) takes large syncs as one ``bulk_upsert`` of ``threshold`` records or more. Two
kinds of work are held for it:

- **A backlog's upserts** (rounds the dispatcher marks ``backlog``) are *staged* until
  ``threshold`` of them are ready at once. A round that is no backlog, or the claim loop
  running out of work or room, sends what is staged the usual way (:meth:`flush`).
- **Backfill and reconcile upserts** are *gathered* apart. A backfill queues its
  contacts a search page at a time, with webhook rounds and empty claims in between, so
  time closes a gathering: :data:`GATHER_IDLE_S` without another, :data:`GATHER_MAX_S`
  after the first (well inside half a lease, when a job must have started), or
  :data:`GATHER_MAX_RECORDS` gathered. A closed gathering of ``threshold`` records or
  more goes as one bulk group, a smaller one the usual way. Gathering for as long as
  that, not just to ``threshold``, is what makes the Bulk API pay: a job costs some seven
  calls per object (create, upload, close, polls, two result reads), as many as 1,400
  records in collections. One gathered group is out at a time (queued or in its Bulk
  job, minutes in a real org); meanwhile further backfill upserts go the usual way, so
  what a backfill holds back stays bounded and the dispatcher need not count it against
  the room it keeps for webhooks (:meth:`BulkGroups.backfill_held`).

Each full group waits in :attr:`BulkGroups.ready` for a worker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from receiver.dispatch.work import ContactWork
from receiver.sync.rules import SEARCH_TYPES

#: A gathering closes after this long without another upsert,
GATHER_IDLE_S = 2.0
#: ... this long after its first,
GATHER_MAX_S = 20.0
#: ... or with this many upserts (the dispatcher keeps room for them in flight).
GATHER_MAX_RECORDS = 10_000


def searched(job: ContactWork) -> bool:
    """True for a backfill or reconcile job: found by a search, nobody's webhook."""
    carrier = job.plan.carrier
    return carrier is not None and carrier.subscription_type in SEARCH_TYPES


def _bulk_upsert(job: ContactWork) -> bool:
    return job.op == "upsert" and searched(job)


class BulkGroups:
    """Staged and gathered upserts, and the groups ready for one ``bulk_upsert`` each."""

    def __init__(self, threshold: int, clock: Callable[[], float] = time.monotonic) -> None:
        #: Records a bulk job takes at least; 0: the target has no bulk path.
        self.threshold = threshold
        self.clock = clock
        self.staged: list[ContactWork] = []
        self.gathered: list[ContactWork] = []
        self._gathered_at = (0.0, 0.0)  # the first and the last gathered
        self.ready: deque[list[ContactWork]] = deque()
        #: The gathered group queued or in its Bulk job, if any.
        self.out: list[ContactWork] | None = None

    def hold(self, jobs: Sequence[ContactWork], *, backlog: bool) -> list[ContactWork]:
        """Hold what of ``jobs`` goes in bulk; returns the jobs to queue now."""
        if self.threshold <= 0:
            return list(jobs)
        if self.out is not None:  # one gathered group at a time: these go the usual way
            return self._stage(list(jobs), backlog=backlog)
        self._gather([j for j in jobs if _bulk_upsert(j)])
        return self._stage([j for j in jobs if not _bulk_upsert(j)], backlog=backlog)

    def _stage(self, rest: list[ContactWork], *, backlog: bool) -> list[ContactWork]:
        if not backlog:
            return rest
        self.staged.extend(j for j in rest if j.op == "upsert")
        if len(self.staged) >= self.threshold:
            self.ready.append(self.staged)
            self.staged = []
        return [j for j in rest if j.op != "upsert"]

    def _gather(self, jobs: list[ContactWork]) -> None:
        if not jobs:
            return
        now = self.clock()
        first = self._gathered_at[0] if self.gathered else now
        self._gathered_at = (first, now)
        self.gathered.extend(jobs)
        if len(self.gathered) >= max(self.threshold, GATHER_MAX_RECORDS):
            self._send_gathered()

    def _send_gathered(self) -> None:
        self.out, self.gathered = self.gathered, []
        self.ready.append(self.out)

    def sent(self, group: list[ContactWork]) -> None:
        """``group``'s Bulk job ended (or never started): the next gathering may form."""
        if group is self.out:
            self.out = None

    def backfill_held(self) -> int:
        """Backfill and reconcile jobs held here or in their Bulk job: bounded by one
        gathering and one group out, whatever the dispatcher's room."""
        return len(self.gathered) + (len(self.out) if self.out is not None else 0)

    def flush(self) -> list[ContactWork]:
        """The staged upserts, to go the usual way: fewer than ``threshold`` came."""
        out, self.staged = self.staged, []
        return out

    def gather_left(self) -> float | None:
        """Seconds until the gathered upserts go the usual way; None when none gather."""
        if not self.gathered:
            return None
        first, last = self._gathered_at
        due = min(last + GATHER_IDLE_S, first + GATHER_MAX_S)
        return max(0.0, due - self.clock())

    def release(self) -> list[ContactWork]:
        """Close a gathering that waited long enough: ``threshold`` upserts or more become
        a bulk group; fewer are returned, to go the usual way."""
        if self.gather_left() != 0.0:
            return []
        if len(self.gathered) >= self.threshold:
            self._send_gathered()
            return []
        out, self.gathered = self.gathered, []
        return out

    def held(self) -> list[ContactWork]:
        """Every job held here."""
        return [*self.staged, *self.gathered, *(j for group in self.ready for j in group)]

    def clear(self) -> None:
        """Forget every held job (the dispatcher stops)."""
        self.staged, self.gathered = [], []
        self.ready.clear()
        self.out = None
