"""The SQLite store's bulk transactions: replay, purge and the dry-run target's records.

Plain functions of a ``sqlite3`` connection, each run whole in the writer thread as one
transaction (see :mod:`receiver.store.sqlite.thread`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from receiver.models import EventFilter
from receiver.store.base import ReplayRefusal, split_replayable
from receiver.store.rows import QmarkParams
from receiver.store.sql import REPLAYABLE_SQL, newest_sql, purge_pick_sql, replay_set
from receiver.store.sqlite.schema import CONTACT_MATCH

# Fewer bound values per statement than any SQLite build allows (999 before 3.32).
_IN_CHUNK = 400
_REPLAY_SET = replay_set("?")
_UPSERT_RECORD = (
    "INSERT INTO records(hubspot_id, kind, target_id, fields, upserted_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(hubspot_id, kind) DO UPDATE SET"
    " fields = excluded.fields, upserted_at = excluded.upserted_at"
)


def _chunks(values: Sequence[Any]) -> list[Sequence[Any]]:
    return [values[i : i + _IN_CHUNK] for i in range(0, len(values), _IN_CHUNK)]


def replay(
    conn: sqlite3.Connection, event_ids: Sequence[int], now: float
) -> tuple[list[ReplayRefusal], int]:
    """Send closed events back to pending; the refusals, and how many were replayed."""
    states: dict[int, str] = {}
    for part in _chunks(list(dict.fromkeys(event_ids))):
        marks = ",".join("?" * len(part))
        states.update(conn.execute(f"SELECT id, state FROM events WHERE id IN ({marks})", part))
    refusals, ok = split_replayable(event_ids, states)
    if ok:
        conn.executemany(
            f"UPDATE events SET {_REPLAY_SET} WHERE id = ? AND {REPLAYABLE_SQL}",
            [(now, i) for i in dict.fromkeys(ok)],
        )
    return refusals, len(ok)


def replay_chunk(
    conn: sqlite3.Connection, flt: EventFilter, now: float, chunk: int, below_id: int | None
) -> tuple[int, int | None]:
    """Replay up to ``chunk`` matching events below ``below_id``, newest first.

    Returns how many were replayed and the lowest id seen (None when none was left).
    """
    params = QmarkParams()
    pick = newest_sql(flt, params, chunk, below_id, CONTACT_MATCH, "id", REPLAYABLE_SQL)
    ids = [row[0] for row in conn.execute(pick, params.values)]
    if not ids:
        return 0, None
    count = 0
    for part in _chunks(ids):
        marks = ",".join("?" * len(part))
        count += conn.execute(
            f"UPDATE events SET {_REPLAY_SET} WHERE id IN ({marks}) AND {REPLAYABLE_SQL}",
            (now, *part),
        ).rowcount
    return count, ids[-1]


def purge_chunk(conn: sqlite3.Connection, flt: EventFilter, chunk: int) -> int | None:
    """Delete up to ``chunk`` matching events and their history; None when none was left."""
    params = QmarkParams()
    ids = [
        row[0]
        for row in conn.execute(purge_pick_sql(flt, params, chunk, CONTACT_MATCH), params.values)
    ]
    if not ids:
        return None
    count = 0
    for part in _chunks(ids):
        marks = ",".join("?" * len(part))
        conn.execute(f"DELETE FROM event_history WHERE event_id IN ({marks})", part)
        count += conn.execute(f"DELETE FROM events WHERE id IN ({marks})", part).rowcount
    return count


def upsert_records(
    conn: sqlite3.Connection, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
) -> list[tuple[str, bool]]:
    """Merge fields into dry-run records ``(kind, hubspot_id, fields)``.

    One SELECT reads the fields already stored, one ``executemany`` writes them all.
    """
    current: dict[tuple[str, str], dict[str, Any]] = {}
    wanted = list(dict.fromkeys(hubspot_id for _, hubspot_id, _ in items))
    kinds = {(kind, hubspot_id) for kind, hubspot_id, _ in items}
    for part in _chunks(wanted):
        marks = ",".join("?" * len(part))
        for hubspot_id, kind, fields in conn.execute(
            f"SELECT hubspot_id, kind, fields FROM records WHERE hubspot_id IN ({marks})", part
        ):
            if (kind, hubspot_id) in kinds:
                current[(kind, hubspot_id)] = orjson.loads(fields)
    out = []
    rows = []
    for kind, hubspot_id, fields in items:
        key = (kind, hubspot_id)
        created = key not in current
        merged = {**current.get(key, {}), **fields}
        current[key] = merged  # a later item for the same record merges into this one
        target_id = f"dry-{kind}-{hubspot_id}"
        rows.append((hubspot_id, kind, target_id, orjson.dumps(merged).decode(), now))
        out.append((target_id, created))
    conn.executemany(_UPSERT_RECORD, rows)
    return out


def delete_records(conn: sqlite3.Connection, hubspot_id: str) -> int:
    """Delete the dry-run Lead and Contact of a HubSpot id."""
    return int(conn.execute("DELETE FROM records WHERE hubspot_id = ?", (hubspot_id,)).rowcount)
