"""Backfill jobs and reconciliation state in PostgreSQL, mixed into :class:`PostgresStore`.

The same rows and rules as the SQLite store (see :mod:`receiver.store.sqlite.jobs`). Across
instances: a second running job fails on the partial unique index, whichever instance
inserts it; taking a lease is one ``UPDATE`` whose condition PostgreSQL checks again on
the locked row, so of two instances racing for a free job or pass exactly one gets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from receiver.models import BackfillJob, ReconcileState
from receiver.store.job_rows import BACKFILL_TYPE, JOB_COLUMNS, job_from_row

BOOKKEEPING = "SET LOCAL synchronous_commit = off"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class PostgresJobs:
    """The job methods of :class:`~receiver.store.base.EventStore` for PostgreSQL."""

    if TYPE_CHECKING:

        @property
        def pool(self) -> Any: ...

    async def create_backfill(self, stages: Sequence[str], now: float) -> BackfillJob | None:
        """Start a backfill of ``stages``; None when one is running already."""
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO backfills (state, stages, started_at) VALUES ('running', $1, $2)"
                f" RETURNING {JOB_COLUMNS}",
                _json(list(stages)),
                now,
            )
        except asyncpg.UniqueViolationError:
            return None
        return job_from_row(row)

    async def take_backfill(self, owner: str, now: float, lease_s: float) -> BackfillJob | None:
        """Lease the running backfill for ``lease_s``, unless another owner holds it."""
        row = await self.pool.fetchrow(
            "UPDATE backfills SET owner = $1, lease_until = $2 WHERE state = 'running'"
            " AND (owner IS NULL OR lease_until < $3 OR owner = $1)"
            f" RETURNING {JOB_COLUMNS}",
            owner,
            now + lease_s,
            now,
        )
        return job_from_row(row) if row else None

    async def advance_backfill(
        self,
        job_id: int,
        owner: str,
        counts: tuple[int, int, int, int],
        cursor: dict[str, Any],
        now: float,
        lease_s: float,
    ) -> BackfillJob | None:
        """Store ``(found, queued, pages, calls)`` and the cursor; None if the lease is lost."""
        found, queued, pages, calls = counts
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(BOOKKEEPING)
            row = await conn.fetchrow(
                "UPDATE backfills SET found = $1, queued = $2, pages = $3, calls = $4,"
                " cursor = $5, lease_until = $6"
                " WHERE id = $7 AND owner = $8 AND state = 'running'"
                f" RETURNING {JOB_COLUMNS}",
                found,
                queued,
                pages,
                calls,
                _json(cursor),
                now + lease_s,
                job_id,
                owner,
            )
        return job_from_row(row) if row else None

    async def finish_backfill(
        self, job_id: int, owner: str, state: str, error: str | None, now: float
    ) -> None:
        """End the backfill as ``state``."""
        await self.pool.execute(
            "UPDATE backfills SET state = $1, error = $2, finished_at = $3, owner = NULL,"
            " lease_until = 0 WHERE id = $4 AND owner = $5 AND state = 'running'",
            state,
            error,
            now,
            job_id,
            owner,
        )

    async def release_backfill(self, job_id: int, owner: str) -> None:
        """Give up the backfill's lease without ending it."""
        await self.pool.execute(
            "UPDATE backfills SET owner = NULL, lease_until = 0 WHERE id = $1 AND owner = $2",
            job_id,
            owner,
        )

    async def cancel_backfill(self, job_id: int, now: float) -> BackfillJob | None:
        """Ask a running backfill to stop; the job as it is then, or None if unknown."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE backfills SET cancel_requested = true WHERE id = $1 AND state = 'running'",
                job_id,
            )
            await conn.execute(
                "UPDATE backfills SET state = 'cancelled', finished_at = $1, owner = NULL,"
                " lease_until = 0 WHERE id = $2 AND state = 'running' AND lease_until < $1",
                now,
                job_id,
            )
            row = await conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM backfills WHERE id = $1", job_id)
        return job_from_row(row) if row else None

    async def get_backfill(self, job_id: int) -> BackfillJob | None:
        """One backfill, or None."""
        row = await self.pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM backfills WHERE id = $1", job_id)
        return job_from_row(row) if row else None

    async def list_backfills(self, limit: int) -> list[BackfillJob]:
        """The newest ``limit`` backfills, newest first."""
        rows = await self.pool.fetch(
            f"SELECT {JOB_COLUMNS} FROM backfills ORDER BY id DESC LIMIT $1", limit
        )
        return [job_from_row(row) for row in rows]

    async def backfill_outcomes(self, job: BackfillJob) -> dict[str, int]:
        """Backfill events received since ``job`` started, counted by state."""
        rows = await self.pool.fetch(
            "SELECT state, count(*) FROM events WHERE received_at >= $1"
            " AND subscription_type = $2 GROUP BY state",
            job.started_at,
            BACKFILL_TYPE,
        )
        return {state: int(n) for state, n in rows}

    async def take_reconcile(self, owner: str, now: float, lease_s: float) -> ReconcileState | None:
        """Lease the reconciliation pass; None while another instance runs one."""
        row = await self.pool.fetchrow(
            "UPDATE reconcile_state SET owner = $1, lease_until = $2"
            " WHERE id = 1 AND (owner IS NULL OR lease_until < $3 OR owner = $1)"
            " RETURNING watermark, last_run_at, found",
            owner,
            now + lease_s,
            now,
        )
        return ReconcileState(row[0], row[1], int(row[2])) if row else None

    async def finish_reconcile(
        self, owner: str, watermark: float | None, found: int, now: float
    ) -> None:
        """Store a pass's watermark (None: keep the old one) and count, and release it."""
        await self.pool.execute(
            "UPDATE reconcile_state SET watermark = coalesce($1, watermark), last_run_at = $2,"
            " found = $3, owner = NULL, lease_until = 0 WHERE id = 1 AND owner = $4",
            watermark,
            now,
            found,
            owner,
        )

    async def reconcile_state(self) -> ReconcileState:
        """The stored watermark, last pass and its count."""
        row = await self.pool.fetchrow(
            "SELECT watermark, last_run_at, found FROM reconcile_state WHERE id = 1"
        )
        if row is None:
            return ReconcileState(None, None, 0)
        return ReconcileState(row[0], row[1], int(row[2]))
