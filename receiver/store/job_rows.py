"""Backfill job rows, shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from receiver.models import BackfillJob

BACKFILL_TYPE = "stagesync.backfill"
JOB_COLUMNS = (
    "id, state, stages, found, queued, pages, calls, cursor, cancel_requested, error,"
    " started_at, finished_at, owner, lease_until"
)


def job_from_row(row: Sequence[Any]) -> BackfillJob:
    """A :class:`BackfillJob` from a row selected with :data:`JOB_COLUMNS`."""
    return BackfillJob(
        id=int(row[0]),
        state=row[1],
        stages=tuple(orjson.loads(row[2])),
        found=int(row[3]),
        queued=int(row[4]),
        pages=int(row[5]),
        calls=int(row[6]),
        cursor=orjson.loads(row[7]) if row[7] else {},
        cancel_requested=bool(row[8]),
        error=row[9],
        started_at=float(row[10]),
        finished_at=float(row[11]) if row[11] is not None else None,
        owner=row[12],
        lease_until=float(row[13]),
    )
