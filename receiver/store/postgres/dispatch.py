"""The dispatcher's PostgreSQL transactions: claiming contacts and recording rounds.

A claim locks each candidate contact's lease row with ``FOR UPDATE SKIP LOCKED`` and
gives it an owner and an expiry in one transaction, so two instances never hold one
contact. A record writes outcomes, history and contact state and releases the leases in
one transaction, fenced: it first locks the lease rows the recording owner still holds
(unexpired), and writes nothing for the other contacts, which it returns as refused.

Both commit with ``synchronous_commit = off``: they are bookkeeping, not acknowledged
writes, so they do not make the webhook commits queue behind a WAL flush of their own.
A crash of the database server may lose the last of them (never a webhook's: each
webhook commit flushes the WAL written before it); the contacts are then synced again,
the SPEC's "crash between an upsert and its commit", and upserts are idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from receiver.models import ClaimedContact, ContactState, ContactUpdate, Outcome
from receiver.store.postgres import sql as q
from receiver.store.rows import EVENT_COLUMNS, claimed_contacts, history_rows
from receiver.store.sql import CLAIM_SCAN_PER_CONTACT, CONTACT_COLUMNS, OPEN_SQL

BOOKKEEPING = "SET LOCAL synchronous_commit = off"
CLAIM_TRIES = 3


async def claim(
    pool: Any, owner: str, now: float, lease_s: float, max_contacts: int
) -> list[ClaimedContact]:
    """Lease up to ``max_contacts`` contacts with due events, oldest first."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(BOOKKEEPING)
        ids = await _lease(conn, owner, now, lease_s, max_contacts)
        if not ids:
            return []
        rows = await conn.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE object_id = ANY($1::bigint[])"
            f" AND {OPEN_SQL} AND next_attempt_at <= $2 ORDER BY occurred_at, id",
            ids,
            now,
        )
        states = {
            r[0]: ContactState(*r)
            for r in await conn.fetch(
                f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE object_id = ANY($1::bigint[])",
                ids,
            )
        }
    return claimed_contacts(ids, rows, states)


async def _lease(conn: Any, owner: str, now: float, lease_s: float, max_contacts: int) -> list[int]:
    for _ in range(CLAIM_TRIES):
        # Twice as many candidates as wanted: some may be mid-claim by another instance.
        candidates = [
            r[0]
            for r in await conn.fetch(
                q.CLAIM_CANDIDATES, now, CLAIM_SCAN_PER_CONTACT * max_contacts, max_contacts * 2
            )
        ]
        if not candidates:
            return []
        await conn.execute(q.CLAIM_ENSURE, candidates)
        rows = await conn.fetch(q.CLAIM_TAKE, candidates, now, max_contacts, owner, now + lease_s)
        taken = {r[0] for r in rows}
        if taken:
            return [i for i in candidates if i in taken]
        # Every candidate was taken by another instance since our snapshot: look again,
        # the next statement's snapshot sees their leases.
    return []


async def record(
    pool: Any,
    owner: str,
    outcomes: Sequence[Outcome],
    contacts: Sequence[ContactUpdate],
    release: Sequence[int],
    now: float,
) -> list[int]:
    """Record outcomes and contact state, and release leases, in one transaction; the
    contacts of ``release`` whose lease ``owner`` lost are refused and returned."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(BOOKKEEPING)
        refused: list[int] = []
        if release:
            contact_ids = sorted(set(release))
            held = {r[0] for r in await conn.fetch(q.FENCE, contact_ids, owner, now)}
            refused = [i for i in contact_ids if i not in held]
        if refused:
            ids = [o.event_id for o in outcomes]
            theirs = {r[0] for r in await conn.fetch(q.EVENTS_OF, ids, refused)}
            outcomes = [o for o in outcomes if o.event_id not in theirs]
            contacts = [c for c in contacts if c.object_id not in set(refused)]
        updates = q.merge_outcomes(outcomes)
        history = history_rows(outcomes)
        contact_rows = q.contact_rows(contacts)
        if updates:
            await conn.execute(q.RECORD_EVENTS, *q.columns(updates, 11), now)
        if history:
            await conn.execute(q.RECORD_HISTORY, *q.columns(history, 4), now)
        if contact_rows:
            await conn.execute(q.RECORD_CONTACTS, *q.columns(contact_rows, 6), now)
        if release:
            await conn.execute(q.RELEASE, sorted(set(release)), owner)
        if any(o.state == "synced" for o in outcomes):
            await conn.execute(q.MARK_SYNCED, now)
    return refused
