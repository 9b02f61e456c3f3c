"""Replay and purge on PostgreSQL: operator-driven writes over many events, in chunks.

Each chunk is one statement, so one short transaction: a replay of a million events
never holds locks for long, and the running instances keep claiming meanwhile. A chunk
that makes events ``pending`` fires the NOTIFY trigger, so every instance wakes for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from receiver.models import EventFilter
from receiver.store.base import ReplayRefusal, split_replayable
from receiver.store.rows import DollarParams, filter_sql

CLOSED_VALID = "state NOT IN ('pending', 'retrying', 'invalid')"
# ``attempt_floor`` keeps the attempts made before the replay out of the new budget.
REPLAY_SET = (
    "state = 'pending', reason = NULL, next_attempt_at = 0, attempt_floor = attempts,"
    " updated_at = $1"
)


async def replay(
    pool: Any, event_ids: Sequence[int], now: float
) -> tuple[list[ReplayRefusal], bool]:
    """Send closed events back to pending; the refusals, and whether any was replayed."""
    rows = await pool.fetch(
        "SELECT id, state FROM events WHERE id = ANY($1::bigint[])", list(event_ids)
    )
    states = {r[0]: r[1] for r in rows}
    refusals, ok = split_replayable(event_ids, states)
    if ok:
        await pool.execute(
            f"UPDATE events SET {REPLAY_SET} WHERE id = ANY($2::bigint[]) AND {CLOSED_VALID}",
            now,
            sorted(set(ok)),
        )
    return refusals, bool(ok)


async def replay_matching(
    pool: Any, flt: EventFilter, now: float, chunk: int, step: Callable[[int], None]
) -> int:
    """Replay closed, valid events matching ``flt``, newest first; ``step(total)`` per chunk."""
    total = 0
    last_id: int | None = None
    while True:
        params = DollarParams(start=1)  # $1 is ``now`` in REPLAY_SET
        where = filter_sql(flt, params) + f" AND {CLOSED_VALID}"
        if last_id is not None:
            where += f" AND id < {params(last_id)}"
        row = await pool.fetchrow(
            f"""
            WITH pick AS MATERIALIZED (
                SELECT id FROM events WHERE {where} ORDER BY id DESC LIMIT {params(chunk)}
            ), done AS (
                UPDATE events SET {REPLAY_SET}
                WHERE id IN (SELECT id FROM pick) AND {CLOSED_VALID} RETURNING 1
            )
            SELECT (SELECT min(id) FROM pick), (SELECT count(*) FROM done)
            """,
            now,
            *params.values,
        )
        if row[0] is None:
            return total
        last_id = int(row[0])
        total += int(row[1])
        step(total)


async def purge(pool: Any, flt: EventFilter, chunk: int) -> int:
    """Delete matching events and their history, oldest first; the count."""
    total = 0
    while True:
        params = DollarParams()
        where = filter_sql(flt, params)
        row = await pool.fetchrow(
            f"""
            WITH victims AS MATERIALIZED (
                SELECT id FROM events WHERE {where} ORDER BY id LIMIT {params(chunk)}
            ), history AS (
                DELETE FROM event_history WHERE event_id IN (SELECT id FROM victims)
            ), gone AS (
                DELETE FROM events WHERE id IN (SELECT id FROM victims) RETURNING 1
            )
            SELECT (SELECT count(*) FROM victims), (SELECT count(*) FROM gone)
            """,
            *params.values,
        )
        if int(row[0]) == 0:
            return total
        total += int(row[1])
