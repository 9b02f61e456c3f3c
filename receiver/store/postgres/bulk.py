"""Replay and purge on PostgreSQL: operator-driven writes over many events, in chunks.

Each chunk is one statement, so one short transaction: a replay of a million events
never holds locks for long, and the running instances keep claiming meanwhile. A chunk
that makes events ``pending`` fires the NOTIFY trigger, so every instance wakes for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.models import EventFilter
from receiver.store.base import ReplayRefusal, split_replayable
from receiver.store.rows import DollarParams
from receiver.store.sql import REPLAYABLE_SQL, newest_sql, purge_pick_sql, replay_set

REPLAY_SET = replay_set("$1")


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
            f"UPDATE events SET {REPLAY_SET} WHERE id = ANY($2::bigint[]) AND {REPLAYABLE_SQL}",
            now,
            sorted(set(ok)),
        )
    return refusals, bool(ok)


async def replay_chunk(
    pool: Any, flt: EventFilter, now: float, chunk: int, below_id: int | None
) -> tuple[int, int | None]:
    """Replay up to ``chunk`` closed, valid events matching ``flt`` below ``below_id``,
    newest first, in one statement; how many, and the lowest id seen (None: none left)."""
    params = DollarParams(start=1)  # $1 is ``now`` in REPLAY_SET
    pick = newest_sql(flt, params, chunk, below_id, columns="id", also=REPLAYABLE_SQL)
    row = await pool.fetchrow(
        f"""
        WITH pick AS MATERIALIZED ({pick}), done AS (
            UPDATE events SET {REPLAY_SET}
            WHERE id IN (SELECT id FROM pick) AND {REPLAYABLE_SQL} RETURNING 1
        )
        SELECT (SELECT min(id) FROM pick), (SELECT count(*) FROM done)
        """,
        now,
        *params.values,
    )
    return (0, None) if row[0] is None else (int(row[1]), int(row[0]))


async def purge_chunk(pool: Any, flt: EventFilter, chunk: int) -> int | None:
    """Delete up to ``chunk`` matching events and their history, oldest first, in one
    statement; how many, None when none was left."""
    params = DollarParams()
    row = await pool.fetchrow(
        f"""
        WITH victims AS MATERIALIZED ({purge_pick_sql(flt, params, chunk)}), history AS (
            DELETE FROM event_history WHERE event_id IN (SELECT id FROM victims)
        ), gone AS (
            DELETE FROM events WHERE id IN (SELECT id FROM victims) RETURNING 1
        )
        SELECT (SELECT count(*) FROM victims), (SELECT count(*) FROM gone)
        """,
        *params.values,
    )
    return None if int(row[0]) == 0 else int(row[1])
