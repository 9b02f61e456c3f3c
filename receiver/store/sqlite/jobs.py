"""Backfill jobs and reconciliation state in SQLite, mixed into :class:`SQLiteStore`.

A job row carries its lease (``owner``, ``lease_until``): an instance runs a job only
while it holds the lease, renewed with every page, so a job whose runner died is taken
over once the lease expires and goes on from its stored cursor. At most one job is
``running`` (a partial unique index), so a second start fails on insert whoever makes
it. Reconciliation has one row, leased the same way. Writes go through the store's
writer (and its write lock); operator actions are durable, progress is bookkeeping.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from receiver.models import BackfillJob, ReconcileState
from receiver.store.job_rows import BACKFILL_TYPE, JOB_COLUMNS, job_from_row

if TYPE_CHECKING:
    import aiosqlite

    from receiver.store.sqlite.thread import SQLiteWriter


def _one(conn: sqlite3.Connection, job_id: int) -> BackfillJob | None:
    row = conn.execute(f"SELECT {JOB_COLUMNS} FROM backfills WHERE id = ?", (job_id,)).fetchone()
    return job_from_row(row) if row else None


def create(conn: sqlite3.Connection, stages: Sequence[str], now: float) -> BackfillJob | None:
    """Insert a running job; None when one is running already."""
    try:
        cur = conn.execute(
            "INSERT INTO backfills (state, stages, started_at) VALUES ('running', ?, ?)",
            (orjson.dumps(list(stages)).decode(), now),
        )
    except sqlite3.IntegrityError:
        return None
    assert cur.lastrowid is not None
    return _one(conn, cur.lastrowid)


def take(conn: sqlite3.Connection, owner: str, now: float, lease_s: float) -> BackfillJob | None:
    """Lease the running job, if no one else holds it."""
    row = conn.execute(
        "UPDATE backfills SET owner = ?, lease_until = ?"
        " WHERE state = 'running' AND (owner IS NULL OR lease_until < ? OR owner = ?)"
        f" RETURNING {JOB_COLUMNS}",
        (owner, now + lease_s, now, owner),
    ).fetchone()
    return job_from_row(row) if row else None


def advance(
    conn: sqlite3.Connection,
    job_id: int,
    owner: str,
    counts: tuple[int, int, int, int],
    cursor: dict[str, Any],
    now: float,
    lease_s: float,
) -> BackfillJob | None:
    """Store the counts and cursor after a page and renew the lease; None if not ours."""
    found, queued, pages, calls = counts
    row = conn.execute(
        "UPDATE backfills SET found = ?, queued = ?, pages = ?, calls = ?, cursor = ?,"
        " lease_until = ? WHERE id = ? AND owner = ? AND state = 'running'"
        f" RETURNING {JOB_COLUMNS}",
        (found, queued, pages, calls, orjson.dumps(cursor).decode(), now + lease_s, job_id, owner),
    ).fetchone()
    return job_from_row(row) if row else None


def finish(
    conn: sqlite3.Connection, job_id: int, owner: str, state: str, error: str | None, now: float
) -> None:
    """End the job as ``state`` (done, failed or cancelled), if this owner holds it."""
    conn.execute(
        "UPDATE backfills SET state = ?, error = ?, finished_at = ?, owner = NULL,"
        " lease_until = 0 WHERE id = ? AND owner = ? AND state = 'running'",
        (state, error, now, job_id, owner),
    )


def release(conn: sqlite3.Connection, job_id: int, owner: str) -> None:
    """Give the lease up (a clean stop): another runner may take the job at once."""
    conn.execute(
        "UPDATE backfills SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
        (job_id, owner),
    )


def cancel(conn: sqlite3.Connection, job_id: int, now: float) -> BackfillJob | None:
    """Ask the job to stop; one that no runner holds is cancelled at once."""
    conn.execute(
        "UPDATE backfills SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,)
    )
    conn.execute(
        "UPDATE backfills SET state = 'cancelled', finished_at = ?, owner = NULL,"
        " lease_until = 0 WHERE id = ? AND state = 'running' AND lease_until < ?",
        (now, job_id, now),
    )
    return _one(conn, job_id)


def take_reconcile(
    conn: sqlite3.Connection, owner: str, now: float, lease_s: float
) -> ReconcileState | None:
    """Lease the reconciliation pass; None while another instance holds it."""
    row = conn.execute(
        "UPDATE reconcile_state SET owner = ?, lease_until = ?"
        " WHERE id = 1 AND (owner IS NULL OR lease_until < ? OR owner = ?)"
        " RETURNING watermark, last_run_at, found",
        (owner, now + lease_s, now, owner),
    ).fetchone()
    return ReconcileState(row[0], row[1], int(row[2])) if row else None


def finish_reconcile(
    conn: sqlite3.Connection, owner: str, watermark: float | None, found: int, now: float
) -> None:
    """Store a pass's result (the watermark only when it succeeded) and release it."""
    conn.execute(
        "UPDATE reconcile_state SET watermark = coalesce(?, watermark), last_run_at = ?,"
        " found = ?, owner = NULL, lease_until = 0 WHERE id = 1 AND owner = ?",
        (watermark, now, found, owner),
    )


class SQLiteJobs:
    """The job methods of :class:`~receiver.store.base.EventStore` for SQLite."""

    if TYPE_CHECKING:

        @property
        def _wr(self) -> SQLiteWriter: ...

        @property
        def _rc(self) -> aiosqlite.Connection: ...

    async def create_backfill(self, stages: Sequence[str], now: float) -> BackfillJob | None:
        """Start a backfill of ``stages``; None when one is running already."""
        return await self._wr.transaction(create, stages, now, durable=True)

    async def take_backfill(self, owner: str, now: float, lease_s: float) -> BackfillJob | None:
        """Lease the running backfill for ``lease_s``, unless another owner holds it."""
        return await self._wr.transaction(take, owner, now, lease_s)

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
        return await self._wr.transaction(advance, job_id, owner, counts, cursor, now, lease_s)

    async def finish_backfill(
        self, job_id: int, owner: str, state: str, error: str | None, now: float
    ) -> None:
        """End the backfill as ``state``."""
        await self._wr.transaction(finish, job_id, owner, state, error, now, durable=True)

    async def release_backfill(self, job_id: int, owner: str) -> None:
        """Give up the backfill's lease without ending it."""
        await self._wr.transaction(release, job_id, owner, durable=True)

    async def cancel_backfill(self, job_id: int, now: float) -> BackfillJob | None:
        """Ask a running backfill to stop; the job as it is then, or None if unknown."""
        return await self._wr.transaction(cancel, job_id, now, durable=True)

    async def get_backfill(self, job_id: int) -> BackfillJob | None:
        """One backfill, or None."""
        async with self._rc.execute(
            f"SELECT {JOB_COLUMNS} FROM backfills WHERE id = ?", (job_id,)
        ) as cur:
            row = await cur.fetchone()
        return job_from_row(row) if row else None

    async def list_backfills(self, limit: int) -> list[BackfillJob]:
        """The newest ``limit`` backfills, newest first."""
        async with self._rc.execute(
            f"SELECT {JOB_COLUMNS} FROM backfills ORDER BY id DESC LIMIT ?", (limit,)
        ) as cur:
            return [job_from_row(row) for row in await cur.fetchall()]

    async def backfill_outcomes(self, job: BackfillJob) -> dict[str, int]:
        """Backfill events received since ``job`` started, counted by state."""
        async with self._rc.execute(
            "SELECT state, count(*) FROM events INDEXED BY events_received"
            " WHERE received_at >= ? AND subscription_type = ? GROUP BY state",
            (job.started_at, BACKFILL_TYPE),
        ) as cur:
            return {state: int(n) for state, n in await cur.fetchall()}

    async def take_reconcile(self, owner: str, now: float, lease_s: float) -> ReconcileState | None:
        """Lease the reconciliation pass; None while another instance runs one."""
        return await self._wr.transaction(take_reconcile, owner, now, lease_s)

    async def finish_reconcile(
        self, owner: str, watermark: float | None, found: int, now: float
    ) -> None:
        """Store a pass's watermark (None: keep the old one) and count, and release it."""
        await self._wr.transaction(finish_reconcile, owner, watermark, found, now, durable=True)

    async def reconcile_state(self) -> ReconcileState:
        """The stored watermark, last pass and its count."""
        async with self._rc.execute(
            "SELECT watermark, last_run_at, found FROM reconcile_state WHERE id = 1"
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return ReconcileState(None, None, 0)
        return ReconcileState(row[0], row[1], int(row[2]))
