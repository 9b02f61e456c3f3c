"""The dispatcher's SQLite transactions, as plain functions of a ``sqlite3`` connection.

Each runs whole in the writer thread (see :mod:`receiver.store.sqlite_thread`), between
``BEGIN IMMEDIATE`` and ``COMMIT``, so a claim or a record costs one thread hop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from receiver.models import ClaimedContact, ContactState, ContactUpdate, Outcome, StoredEvent
from receiver.store.rows import EVENT_COLUMNS, event_from_row

OPEN = "state IN ('pending', 'retrying')"
# How many open events a claim looks at to find distinct contacts.
CLAIM_SCAN = 5000

# The indexes are named: without statistics SQLite picks events_state(state, id) for
# both, which reads every open event (and sorts them) instead of stopping at the LIMIT or
# reading only the claimed contacts' events.
_DUE_CONTACTS = f"""
    SELECT object_id FROM (
        SELECT id, object_id FROM events INDEXED BY events_open
        WHERE {OPEN} AND next_attempt_at <= ?
          AND object_id NOT IN (SELECT object_id FROM contact_leases WHERE until > ?)
        ORDER BY id LIMIT ?
    ) AS due
    GROUP BY object_id ORDER BY min(id) LIMIT ?
"""
_LEASE = (
    "INSERT INTO contact_leases(object_id, owner, until) VALUES (?, ?, ?)"
    " ON CONFLICT(object_id) DO UPDATE SET owner = excluded.owner, until = excluded.until"
)
_UPDATE_EVENT = (
    "UPDATE events SET state = ?, reason = ?, stage = coalesce(?, stage),"
    " attempts = attempts + ?, last_error_code = ?, last_error_message = ?,"
    " next_attempt_at = ?, target_kind = coalesce(?, target_kind),"
    " target_id = coalesce(?, target_id), coalesced_into = ?, updated_at = ?"
    " WHERE id = ?"
)
_INSERT_HISTORY = (
    "INSERT INTO event_history(event_id, at, outcome, error_code, error_message)"
    " VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_CONTACT = (
    "INSERT INTO contacts(object_id, kind, target_id, stage, last_occurred_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(object_id) DO UPDATE SET kind = excluded.kind,"
    " target_id = excluded.target_id, stage = excluded.stage,"
    " last_occurred_at = excluded.last_occurred_at, updated_at = excluded.updated_at"
)
_LAST_SYNCED = (
    "INSERT INTO meta(key, value) VALUES ('last_synced_at', ?)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


def claim(
    conn: sqlite3.Connection, owner: str, now: float, lease_s: float, max_contacts: int
) -> list[ClaimedContact]:
    """Lease up to ``max_contacts`` contacts with due events, oldest first."""
    ids = [row[0] for row in conn.execute(_DUE_CONTACTS, (now, now, CLAIM_SCAN, max_contacts))]
    if not ids:
        return []
    until = now + lease_s
    conn.executemany(_LEASE, [(i, owner, until) for i in ids])
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_object"
        f" WHERE object_id IN ({marks})"
        f" AND {OPEN} AND next_attempt_at <= ? ORDER BY occurred_at, id",
        (*ids, now),
    ).fetchall()
    states = {
        r[0]: ContactState(*r)
        for r in conn.execute(
            "SELECT object_id, kind, target_id, stage, last_occurred_at FROM contacts"
            f" WHERE object_id IN ({marks})",
            ids,
        )
    }
    by_contact: dict[int, list[StoredEvent]] = {i: [] for i in ids}
    for row in rows:
        event = event_from_row(row)
        by_contact[event.object_id].append(event)  # type: ignore[index]
    return [ClaimedContact(i, tuple(by_contact[i]), states.get(i)) for i in ids]


def record(
    conn: sqlite3.Connection,
    owner: str,
    outcomes: Sequence[Outcome],
    contacts: Sequence[ContactUpdate],
    release: Sequence[int],
    now: float,
) -> None:
    """Record outcomes and contact state, and release leases."""
    updates: list[tuple[Any, ...]] = [
        (o.state, o.reason, o.stage, 1 if o.counts_attempt else 0, o.error_code,
         o.error_message, o.next_attempt_at or 0, o.target_kind, o.target_id,
         o.coalesced_into, now, o.event_id)
        for o in outcomes
    ]  # fmt: skip
    history = [
        (o.event_id, now, "retry" if o.state == "retrying" else o.state, o.error_code,
         o.error_message)
        for o in outcomes
        if o.counts_attempt
    ]  # fmt: skip
    if updates:
        conn.executemany(_UPDATE_EVENT, updates)
    if history:
        conn.executemany(_INSERT_HISTORY, history)
    if contacts:
        conn.executemany(
            _UPSERT_CONTACT,
            [
                (c.object_id, c.kind, c.target_id, c.stage, c.last_occurred_at, now)
                for c in contacts
            ],
        )
    if release:
        conn.executemany(
            "DELETE FROM contact_leases WHERE object_id = ? AND owner = ?",
            [(i, owner) for i in release],
        )
    if any(o.state == "synced" for o in outcomes):
        conn.execute(_LAST_SYNCED, (repr(now),))
