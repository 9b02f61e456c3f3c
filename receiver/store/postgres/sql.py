"""SQL statements of the PostgreSQL store, and the pure functions that shape their arrays.

Batched writes pass one array per column and ``unnest`` them, so a whole group commit,
a claim or a record is one statement: one round trip, and one firing of the
statement-level count triggers (``executemany`` would fire them once per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.models import ContactUpdate, NewEvent, Outcome
from receiver.store.sql import OPEN_SQL

MIGRATE_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('stagesync:migrate:' || current_schema(), 0))"
)
FOLD_LOCK = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended('stagesync:fold:' || current_schema(), 0))"
)
CHANNEL = "SELECT 'stagesync:' || current_schema()"

# Ids follow arrival order (nextval runs after the ORDER BY), while rows are inserted in
# dedup-key order: two instances inserting overlapping batches then wait on each other's
# keys in one global order, so ON CONFLICT can never deadlock them. Keys already committed
# are filtered out first (a snapshot read, no lock), because ON CONFLICT on a row that a
# record() transaction is updating would wait for that transaction to end.
INGEST = """
WITH input AS MATERIALIZED (
    SELECT nextval('events_id_seq') AS id, u.*
    FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[],
                $7::float8[], $8::bytea[], $9::text[], $10::text[])
         WITH ORDINALITY AS u(dedup_key, state, object_id, subscription_type, occurred_at,
                              stage, received_at, raw, error_code, error_message, ord)
    ORDER BY u.ord
)
INSERT INTO events (id, dedup_key, state, object_id, subscription_type, occurred_at, stage,
                    received_at, updated_at, raw, last_error_code, last_error_message)
SELECT id, dedup_key, state, object_id, subscription_type, occurred_at, stage,
       received_at, received_at, raw, error_code, error_message
FROM input
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.dedup_key = input.dedup_key)
ORDER BY dedup_key
ON CONFLICT (dedup_key) DO NOTHING
RETURNING dedup_key
"""

# The SQLite store asks the same (sqlite/dispatch.py, _DUE_CONTACTS), written apart on
# purpose: there one writer holds the lock, so the leases it reads cannot change under it;
# here candidates are only candidates, re-checked under FOR UPDATE in CLAIM_TAKE.
CLAIM_CANDIDATES = f"""
SELECT object_id FROM (
    SELECT id, object_id FROM events e
    WHERE {OPEN_SQL} AND next_attempt_at <= $1
      AND NOT EXISTS (
        SELECT 1 FROM contact_leases l WHERE l.object_id = e.object_id AND l.until > $1
      )
    ORDER BY id LIMIT $2
) AS due
GROUP BY object_id ORDER BY min(id) LIMIT $3
"""
# Only missing rows are inserted: ON CONFLICT on an existing row would wait for any
# transaction updating it. Sorted, so concurrent claims inserting the same new rows wait
# on each other in one order (no deadlock).
CLAIM_ENSURE = """
INSERT INTO contact_leases (object_id, owner, until)
SELECT x, NULL, 0 FROM unnest($1::bigint[]) AS x
WHERE NOT EXISTS (SELECT 1 FROM contact_leases l WHERE l.object_id = x)
ORDER BY x
ON CONFLICT (object_id) DO NOTHING
"""
# FOR UPDATE re-checks ``until`` on the newest row version, so a lease another instance
# committed after this statement's snapshot is seen; rows being claimed right now are skipped.
CLAIM_TAKE = """
WITH picked AS (
    SELECT object_id FROM contact_leases
    WHERE object_id = ANY($1::bigint[]) AND until <= $2
    ORDER BY array_position($1::bigint[], object_id) LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE contact_leases AS l
SET owner = $4, until = $5, instance = current_setting('application_name')
FROM picked WHERE l.object_id = picked.object_id
RETURNING l.object_id
"""

# The fence of a record: the contacts whose lease this owner still holds, locked until the
# commit, so no claim (FOR UPDATE SKIP LOCKED) can take them while the round is written.
# In id order, as every other statement locking several rows, so no two deadlock.
FENCE = """
SELECT object_id FROM contact_leases
WHERE object_id = ANY($1::bigint[]) AND owner = $2 AND until > $3
ORDER BY object_id FOR UPDATE
"""
EVENTS_OF = """
SELECT id FROM events WHERE id = ANY($1::bigint[]) AND object_id = ANY($2::bigint[])
"""

RECORD_EVENTS = """
UPDATE events AS e SET
    state = u.state, reason = u.reason, stage = coalesce(u.stage, e.stage),
    attempts = e.attempts + u.inc, last_error_code = u.code, last_error_message = u.msg,
    next_attempt_at = u.next_at, target_kind = coalesce(u.kind, e.target_kind),
    target_id = coalesce(u.target_id, e.target_id), coalesced_into = u.into_id,
    updated_at = $12
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
            $7::text[], $8::float8[], $9::text[], $10::text[], $11::bigint[])
     AS u(id, state, reason, stage, inc, code, msg, next_at, kind, target_id, into_id)
WHERE e.id = u.id
"""
RECORD_HISTORY = """
INSERT INTO event_history (event_id, at, outcome, error_code, error_message)
SELECT u.event_id, $5, u.outcome, u.code, u.msg
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
     WITH ORDINALITY AS u(event_id, outcome, code, msg, ord)
ORDER BY u.ord
"""
RECORD_CONTACTS = """
INSERT INTO contacts (object_id, kind, target_id, stage, last_occurred_at, record_digest,
                      updated_at)
SELECT u.*, $7 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                           $6::text[]) AS u
ON CONFLICT (object_id) DO UPDATE SET
    kind = excluded.kind, target_id = excluded.target_id, stage = excluded.stage,
    last_occurred_at = greatest(contacts.last_occurred_at, excluded.last_occurred_at),
    record_digest = excluded.record_digest, updated_at = excluded.updated_at
WHERE excluded.last_occurred_at IS NULL OR contacts.last_occurred_at IS NULL
   OR excluded.last_occurred_at >= contacts.last_occurred_at
"""
# Locked in id order, as the fence does; a claim skips these rows meanwhile (SKIP LOCKED),
# and they are leased anyway.
RENEW_LEASES = """
WITH held AS (
    SELECT object_id FROM contact_leases
    WHERE object_id = ANY($1::bigint[]) AND owner = $2 AND until > $3
    ORDER BY object_id FOR UPDATE
)
UPDATE contact_leases AS l SET until = $4
FROM held WHERE l.object_id = held.object_id
RETURNING l.object_id
"""
RELEASE = """
UPDATE contact_leases SET owner = NULL, until = 0
WHERE object_id = ANY($1::bigint[]) AND owner = $2
"""
# Last in the record transaction, so the row lock is held only until the commit.
MARK_SYNCED = """
INSERT INTO meta (key, value) VALUES ('last_synced_at', $1)
ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)
"""

COUNTS = """
SELECT state, reason, sum(n)::bigint FROM event_count_deltas
GROUP BY state, reason HAVING sum(n) > 0
"""
FOLD = """
WITH gone AS (DELETE FROM event_count_deltas RETURNING state, reason, n)
INSERT INTO event_count_deltas (state, reason, n)
SELECT state, reason, sum(n) FROM gone GROUP BY state, reason HAVING sum(n) <> 0
"""


def ingest_columns(
    requests: Sequence[tuple[Sequence[NewEvent], float]], news: Sequence[Sequence[NewEvent]]
) -> list[list[Any]]:
    """Column arrays for :data:`INGEST`: each request's new events (``news``, see
    :func:`~receiver.store.group_commit.first_copies`), each dedup key once."""
    out: list[list[Any]] = [[] for _ in range(10)]
    for (_, now), events in zip(requests, news, strict=True):
        for ev in events:
            if ev.invalid_error is None:
                row: tuple[Any, ...] = (
                    ev.dedup_key, "pending", ev.object_id, ev.subscription_type,
                    ev.occurred_at, ev.stage, now, ev.raw, None, None,
                )  # fmt: skip
            else:
                row = (ev.dedup_key, "invalid", None, None, None, None, now, ev.raw,
                       "invalid_event", ev.invalid_error)  # fmt: skip
            for column, value in zip(out, row, strict=True):
                column.append(value)
    return out


def merge_outcomes(outcomes: Sequence[Outcome]) -> list[tuple[Any, ...]]:
    """One update row per event, as if the outcomes were applied one after another.

    Rows follow :data:`RECORD_EVENTS`'s columns, sorted by event id so two
    transactions touching the same events lock them in the same order.
    """
    rows: dict[int, list[Any]] = {}
    for o in outcomes:
        inc = 1 if o.counts_attempt else 0
        prev = rows.get(o.event_id)
        rows[o.event_id] = [
            o.event_id, o.state, o.reason,
            o.stage if o.stage is not None or prev is None else prev[3],
            inc + (prev[4] if prev else 0), o.error_code, o.error_message,
            o.next_attempt_at or 0.0,
            o.target_kind if o.target_kind is not None or prev is None else prev[8],
            o.target_id if o.target_id is not None or prev is None else prev[9],
            o.coalesced_into,
        ]  # fmt: skip
    return [tuple(rows[k]) for k in sorted(rows)]


def contact_rows(contacts: Sequence[ContactUpdate]) -> list[tuple[Any, ...]]:
    """One row per contact (the last update wins), sorted by id."""
    last = {c.object_id: c for c in contacts}
    return [
        (c.object_id, c.kind, c.target_id, c.stage, c.last_occurred_at, c.record_digest)
        for c in (last[k] for k in sorted(last))
    ]


def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Transpose rows into ``width`` column arrays (empty arrays for no rows)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]
