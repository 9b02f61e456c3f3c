"""The dispatcher's SQLite transactions, as plain functions of a ``sqlite3`` connection.

Each runs whole in the writer thread (see :mod:`receiver.store.sqlite.thread`), between
``BEGIN IMMEDIATE`` and ``COMMIT``, so a claim or a record costs one thread hop.

Writes of many rows are one statement each over ``json_each(?)``, not ``executemany``:
``sqlite3`` takes the GIL back after every row it steps, and while webhooks are being
parsed on the event loop each of those takes waits its turn, which stretched a round's
transaction, and the write lock every webhook commit waits for. The texts carry no NUL
(see :func:`~receiver.store.rows.storable`), which SQLite's JSON functions would end a
text at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import orjson

from receiver.models import ClaimedContact, ContactState, ContactUpdate, Outcome
from receiver.store.rows import EVENT_COLUMNS, claimed_contacts, history_rows
from receiver.store.sql import CLAIM_SCAN_PER_CONTACT, CONTACT_COLUMNS, OPEN_SQL, unleased_sql

# PostgreSQL asks the same (postgres/sql.py, CLAIM_CANDIDATES) its own way, for several
# instances; here the writer holds the lock, only listed events count (see LIST_CHUNK), and
# the indexes are named: without statistics SQLite picks events_state(state, id) for
# both, which reads every open event (and sorts them) instead of stopping at the LIMIT or
# reading only the claimed contacts' events.
_DUE_CONTACTS = f"""
    SELECT object_id FROM (
        SELECT id, object_id FROM events INDEXED BY events_open
        WHERE {OPEN_SQL} AND listed AND next_attempt_at <= ?
          AND {unleased_sql("?")}
        ORDER BY id LIMIT ?
    ) AS due
    GROUP BY object_id ORDER BY min(id) LIMIT ?
"""
# Webhook commits leave new events out of the index by contact (see sqlite_schema). A
# claim lists them first, oldest first, a chunk at a time, in its own transaction, and
# goes on while no webhook commit waits for the write lock: after a burst, or between
# webhooks, every new event is listed and a contact's events are coalesced as before.
# During a sustained burst it lists one chunk and takes only listed events; the rest
# waits for a later claim, as if it had arrived after this one (it did arrive after
# every listed event). Listing a whole burst at once held the lock for hundreds of ms.
# Listing costs ~4 us an event in bulk (100,000 in 0.4 s, 35 MB of WAL, on the bench
# machine), so even the claim after a large burst lists everything in well under a second
# per 100,000 events; a webhook commit that starts waiting meanwhile waits for the chunk
# in progress and the rest of the claim.
LIST_CHUNK = 1000
_LIST_NEW = """
    UPDATE events SET listed = 1 WHERE id IN (
        SELECT id FROM events INDEXED BY events_unlisted WHERE NOT listed ORDER BY id LIMIT ?
    )
"""
# The same writes, one statement per table for a whole round (see the module docstring).
_UPDATE_EVENTS_JSON = """
    UPDATE events SET state = u.state, reason = u.reason, stage = coalesce(u.stage, events.stage),
        attempts = events.attempts + u.counts, last_error_code = u.code,
        last_error_message = u.message, next_attempt_at = u.next_at,
        target_kind = coalesce(u.kind, events.target_kind),
        target_id = coalesce(u.target_id, events.target_id), coalesced_into = u.into_id,
        updated_at = ?2
    FROM (SELECT value ->> 0 AS state, value ->> 1 AS reason, value ->> 2 AS stage,
                 value ->> 3 AS counts, value ->> 4 AS code, value ->> 5 AS message,
                 value ->> 6 AS next_at, value ->> 7 AS kind, value ->> 8 AS target_id,
                 value ->> 9 AS into_id, value ->> 10 AS id
          FROM json_each(?1)) AS u
    WHERE events.id = u.id
"""
_INSERT_HISTORY_JSON = (
    "INSERT INTO event_history(event_id, at, outcome, error_code, error_message)"
    " SELECT value ->> 0, ?2, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?1)"
)
_UPSERT_CONTACTS_JSON = (
    "INSERT INTO contacts(object_id, kind, target_id, stage, last_occurred_at, record_digest,"
    " updated_at)"
    " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, ?2"
    " FROM json_each(?1) WHERE true"
    " ON CONFLICT(object_id) DO UPDATE SET kind = excluded.kind,"
    " target_id = excluded.target_id, stage = excluded.stage,"
    # max() of SQLite is NULL when either is: the later one, else whichever is known.
    " last_occurred_at = coalesce(max(contacts.last_occurred_at, excluded.last_occurred_at),"
    " contacts.last_occurred_at, excluded.last_occurred_at),"
    " record_digest = excluded.record_digest, updated_at = excluded.updated_at"
    " WHERE excluded.last_occurred_at IS NULL OR contacts.last_occurred_at IS NULL"
    " OR excluded.last_occurred_at >= contacts.last_occurred_at"
)
# The fence of a record (the writer holds the lock, so nothing changes them meanwhile):
# the contacts whose lease this owner still holds, and the events of the others.
_HELD_JSON = (
    "SELECT object_id FROM contact_leases"
    " WHERE owner = ?2 AND until > ?3 AND object_id IN (SELECT value FROM json_each(?1))"
)
_EVENTS_OF_JSON = (
    "SELECT id FROM events WHERE id IN (SELECT value FROM json_each(?1))"
    " AND object_id IN (SELECT value FROM json_each(?2))"
)
_RELEASE_JSON = (
    "DELETE FROM contact_leases WHERE owner = ?2 AND object_id IN (SELECT value FROM json_each(?1))"
)
_LEASE_JSON = (
    "INSERT INTO contact_leases(object_id, owner, until)"
    " SELECT value, ?2, ?3 FROM json_each(?1) WHERE true"
    " ON CONFLICT(object_id) DO UPDATE SET owner = excluded.owner, until = excluded.until"
)
_RENEW_JSON = (
    "UPDATE contact_leases SET until = ?4"
    " WHERE owner = ?2 AND until > ?3 AND object_id IN (SELECT value FROM json_each(?1))"
    " RETURNING object_id"
)
_LAST_SYNCED = (
    "INSERT INTO meta(key, value) VALUES ('last_synced_at', ?)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)


def renew_leases(
    conn: sqlite3.Connection, owner: str, object_ids: Sequence[int], now: float, until: float
) -> list[int]:
    """Move the leases ``owner`` holds at ``now`` on ``object_ids`` to ``until``."""
    rows = conn.execute(_RENEW_JSON, (orjson.dumps(list(object_ids)), owner, now, until))
    return sorted(row[0] for row in rows)


def list_new(conn: sqlite3.Connection, limit: int) -> int:
    """Put up to ``limit`` of the oldest unlisted events in the index by contact."""
    return conn.execute(_LIST_NEW, (limit,)).rowcount


def contact_events_sql(contacts: int) -> str:
    """The due open events of ``contacts`` contacts (their ids, then ``now``), in order."""
    marks = ",".join("?" * contacts)
    return (
        f"SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_object"
        f" WHERE object_id IN ({marks}) AND listed AND {OPEN_SQL} AND next_attempt_at <= ?"
        " ORDER BY occurred_at, id"
    )


def claim(
    conn: sqlite3.Connection,
    owner: str,
    now: float,
    lease_s: float,
    max_contacts: int,
    contended: Callable[[], bool] = lambda: False,
) -> list[ClaimedContact]:
    """Lease up to ``max_contacts`` contacts with due events, oldest first.

    New events are listed first (see ``LIST_CHUNK``), and listing stops early once
    ``contended()`` says a webhook commit is waiting.
    """
    while list_new(conn, LIST_CHUNK) == LIST_CHUNK and not contended():
        pass
    scan = CLAIM_SCAN_PER_CONTACT * max_contacts
    ids = [row[0] for row in conn.execute(_DUE_CONTACTS, (now, now, scan, max_contacts))]
    if not ids:
        return []
    until = now + lease_s
    conn.execute(_LEASE_JSON, (orjson.dumps(ids), owner, until))
    marks = ",".join("?" * len(ids))
    rows = conn.execute(contact_events_sql(len(ids)), (*ids, now)).fetchall()
    states = {
        r[0]: ContactState(*r)
        for r in conn.execute(
            f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE object_id IN ({marks})",
            ids,
        )
    }
    return claimed_contacts(ids, rows, states)


def record(
    conn: sqlite3.Connection,
    owner: str,
    outcomes: Sequence[Outcome],
    contacts: Sequence[ContactUpdate],
    release: Sequence[int],
    now: float,
) -> list[int]:
    """Record outcomes and contact state, and release leases: a statement per table.

    Fenced: the contacts of ``release`` whose lease ``owner`` lost are refused (nothing
    of theirs is written) and returned.
    """
    refused: list[int] = []
    if release:
        contact_ids = sorted(set(release))
        held = {r[0] for r in conn.execute(_HELD_JSON, (orjson.dumps(contact_ids), owner, now))}
        refused = [i for i in contact_ids if i not in held]
    if refused:
        ids = orjson.dumps([o.event_id for o in outcomes])
        theirs = {r[0] for r in conn.execute(_EVENTS_OF_JSON, (ids, orjson.dumps(refused)))}
        outcomes = [o for o in outcomes if o.event_id not in theirs]
        contacts = [c for c in contacts if c.object_id not in set(refused)]
    if outcomes:
        updates = [
            (o.state, o.reason, o.stage, 1 if o.counts_attempt else 0, o.error_code,
             o.error_message, o.next_attempt_at or 0, o.target_kind, o.target_id,
             o.coalesced_into, o.event_id)
            for o in outcomes
        ]  # fmt: skip
        conn.execute(_UPDATE_EVENTS_JSON, (orjson.dumps(updates), now))
    history = history_rows(outcomes)
    if history:
        conn.execute(_INSERT_HISTORY_JSON, (orjson.dumps(history), now))
    if contacts:
        people = [
            (c.object_id, c.kind, c.target_id, c.stage, c.last_occurred_at, c.record_digest)
            for c in contacts
        ]
        conn.execute(_UPSERT_CONTACTS_JSON, (orjson.dumps(people), now))
    if release:
        conn.execute(_RELEASE_JSON, (orjson.dumps(list(release)), owner))
    if any(o.state == "synced" for o in outcomes):
        conn.execute(_LAST_SYNCED, (repr(now),))
    return refused
