"""The SQLite event store: aiosqlite, WAL, ``synchronous=FULL``, group commit.

Writes go through one writer connection guarded by a :class:`WriteLock`, so a
transaction's statements never interleave. Webhook ingest is the exception that proves
the rule: it has a connection and a thread of its own (:mod:`receiver.store.sqlite_ingest`),
takes the same lock, and commits each group of requests with a single statement (one
fsync), answering every request of the group after it. Requests arriving during a
commit form the next group, so the fsync cost is shared under load and a lone request
is never held back. Reads use a third connection, which WAL lets run beside writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite
import orjson

from receiver.models import (
    OPEN_STATES,
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    HistoryEntry,
    NewEvent,
    Outcome,
    StoredEvent,
    TargetRecord,
)
from receiver.store.base import IngestResult, ReplayRefusal
from receiver.store.rows import EVENT_COLUMNS, QmarkParams, event_from_row, filter_sql
from receiver.store.sqlite_ingest import SQLiteIngest
from receiver.store.sqlite_schema import MIGRATIONS
from receiver.store.write_lock import WriteLock

# Every connection: wait for another process's write lock (the CLI) rather than fail,
# and flush the WAL on every commit, so an acknowledged event survives a power loss.
PRAGMAS = (
    "PRAGMA busy_timeout = 10000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
)

_OPEN = "state IN ('pending', 'retrying')"
# How many open events a claim looks at to find distinct contacts.
CLAIM_SCAN = 5000


def sqlite_path(database_url: str) -> str:
    """The file path of a ``sqlite:///PATH`` URL."""
    return database_url.removeprefix("sqlite:///")


class SQLiteStore:
    """:class:`~receiver.store.base.EventStore` on one SQLite file."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        # Webhook commits go before the dispatcher's writes (see write_lock.py).
        self._lock = WriteLock()
        self._ingest: SQLiteIngest | None = None
        self._listeners: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in PRAGMAS:
                await conn.execute(pragma)
        except BaseException:  # e.g. not a database: do not leak the connection's thread
            await conn.close()
            raise
        return conn

    def _connect_ingest(self) -> sqlite3.Connection:
        # Used by the ingest thread only; not pinned to it, so a test may trace it.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Connect, migrate the schema and start the group-commit writer."""
        try:
            self._w = await self._connect()
            await self._migrate(self._w)
            self._r = await self._connect()
            self._ingest = SQLiteIngest(self._connect_ingest, self._lock, self._committed)
            await self._ingest.open()
        except BaseException:
            await self.close()  # leave no connection or thread behind
            raise

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Finish queued commits, then close the connections."""
        if self._ingest is not None:
            await self._ingest.close()
            self._ingest = None
        for conn in (self._w, self._r):
            if conn is not None:
                await conn.close()
        self._w = self._r = None

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit of new events."""
        self._listeners.append(callback)

    def _committed(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def _wc(self) -> aiosqlite.Connection:
        assert self._w is not None, "store is not open"
        return self._w

    @property
    def _rc(self) -> aiosqlite.Connection:
        assert self._r is not None, "store is not open"
        return self._r

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        async with self._rc.execute("SELECT 1") as cur:
            await cur.fetchone()

    # -- ingest ----------------------------------------------------------------------

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Queue events for the next group commit and wait until they are durable."""
        assert self._ingest is not None, "store is not open"
        return await self._ingest.ingest(events, now)

    @property
    def ingest_commits(self) -> int:
        """How many group commits ingest made since the store was opened."""
        return self._ingest.commits if self._ingest is not None else 0

    # -- dispatch --------------------------------------------------------------------

    async def claim(
        self, owner: str, now: float, lease_s: float, max_contacts: int
    ) -> list[ClaimedContact]:
        """Lease up to ``max_contacts`` contacts with due events, oldest first."""
        conn = self._wc
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                async with conn.execute(
                    f"""
                    SELECT object_id FROM (
                        SELECT id, object_id FROM events
                        WHERE {_OPEN} AND next_attempt_at <= ?
                          AND object_id NOT IN (
                            SELECT object_id FROM contact_leases WHERE until > ?
                          )
                        ORDER BY id LIMIT ?
                    ) AS due
                    GROUP BY object_id ORDER BY min(id) LIMIT ?
                    """,
                    (now, now, CLAIM_SCAN, max_contacts),
                ) as cur:
                    ids = [row[0] for row in await cur.fetchall()]
                if not ids:
                    await conn.execute("COMMIT")
                    return []
                until = now + lease_s
                await conn.executemany(
                    "INSERT INTO contact_leases(object_id, owner, until) VALUES (?, ?, ?)"
                    " ON CONFLICT(object_id) DO UPDATE SET owner = excluded.owner,"
                    " until = excluded.until",
                    [(i, owner, until) for i in ids],
                )
                marks = ",".join("?" * len(ids))
                async with conn.execute(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE object_id IN ({marks})"
                    f" AND {_OPEN} AND next_attempt_at <= ? ORDER BY occurred_at, id",
                    (*ids, now),
                ) as cur:
                    rows = await cur.fetchall()
                async with conn.execute(
                    "SELECT object_id, kind, target_id, stage, last_occurred_at FROM contacts"
                    f" WHERE object_id IN ({marks})",
                    ids,
                ) as cur:
                    states = {r[0]: ContactState(*r) for r in await cur.fetchall()}
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        by_contact: dict[int, list[StoredEvent]] = {i: [] for i in ids}
        for row in rows:
            event = event_from_row(row)
            by_contact[event.object_id].append(event)  # type: ignore[index]
        return [ClaimedContact(i, tuple(by_contact[i]), states.get(i)) for i in ids]

    async def record(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        contacts: Sequence[ContactUpdate],
        release: Sequence[int],
        now: float,
    ) -> None:
        """Record outcomes and contact state, and release leases, in one transaction."""
        conn = self._wc
        updates = [
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
        synced = any(o.state == "synced" for o in outcomes)
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                if updates:
                    await conn.executemany(
                        "UPDATE events SET state = ?, reason = ?, stage = coalesce(?, stage),"
                        " attempts = attempts + ?, last_error_code = ?, last_error_message = ?,"
                        " next_attempt_at = ?, target_kind = coalesce(?, target_kind),"
                        " target_id = coalesce(?, target_id), coalesced_into = ?, updated_at = ?"
                        " WHERE id = ?",
                        updates,
                    )
                if history:
                    await conn.executemany(
                        "INSERT INTO event_history(event_id, at, outcome, error_code,"
                        " error_message) VALUES (?, ?, ?, ?, ?)",
                        history,
                    )
                for c in contacts:
                    await conn.execute(
                        "INSERT INTO contacts(object_id, kind, target_id, stage,"
                        " last_occurred_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT(object_id) DO UPDATE SET kind = excluded.kind,"
                        " target_id = excluded.target_id, stage = excluded.stage,"
                        " last_occurred_at = excluded.last_occurred_at,"
                        " updated_at = excluded.updated_at",
                        (c.object_id, c.kind, c.target_id, c.stage, c.last_occurred_at, now),
                    )
                if release:
                    await conn.executemany(
                        "DELETE FROM contact_leases WHERE object_id = ? AND owner = ?",
                        [(i, owner) for i in release],
                    )
                if synced:
                    await conn.execute(
                        "INSERT INTO meta(key, value) VALUES ('last_synced_at', ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (repr(now),),
                    )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def next_due_at(self, now: float) -> float | None:
        """Earliest ``next_attempt_at`` among open events."""
        async with self._rc.execute(
            f"SELECT min(next_attempt_at) FROM events WHERE {_OPEN}"
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    # -- reading ---------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Events per state and reason, from the trigger-kept counts table."""
        out: dict[str, dict[str, int]] = {}
        async with self._rc.execute("SELECT state, reason, n FROM event_counts WHERE n > 0") as cur:
            for state, reason, n in await cur.fetchall():
                out.setdefault(state, {})[reason] = n
        return out

    async def oldest_open_received_at(self, due_at: float | None = None) -> float | None:
        """``received_at`` of the oldest open event (through the partial index)."""
        due = "" if due_at is None else " AND next_attempt_at <= ?"
        async with self._rc.execute(
            f"SELECT received_at FROM events WHERE {_OPEN}{due} ORDER BY id LIMIT 1",
            () if due_at is None else (due_at,),
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def last_synced_at(self) -> float | None:
        """When an event last ended ``synced``."""
        async with self._rc.execute("SELECT value FROM meta WHERE key = 'last_synced_at'") as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def get_event(self, event_id: int) -> StoredEvent | None:
        """One event, or None."""
        async with self._rc.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,)
        ) as cur:
            row = await cur.fetchone()
        return event_from_row(row) if row else None

    async def history(self, event_id: int) -> list[HistoryEntry]:
        """The attempts of one event, oldest first."""
        async with self._rc.execute(
            "SELECT at, outcome, error_code, error_message FROM event_history"
            " WHERE event_id = ? ORDER BY rowid",
            (event_id,),
        ) as cur:
            return [HistoryEntry(*row) for row in await cur.fetchall()]

    async def list_events(
        self, flt: EventFilter, limit: int, before_id: int | None = None
    ) -> list[StoredEvent]:
        """Matching events, newest first, below ``before_id``."""
        params = QmarkParams()
        where = filter_sql(flt, params)
        if before_id is not None:
            where += f" AND id < {params(before_id)}"
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY id DESC LIMIT ?"
        async with self._rc.execute(sql, (*params.values, limit)) as cur:
            return [event_from_row(row) for row in await cur.fetchall()]

    async def count_matching(self, flt: EventFilter) -> int:
        """How many events match."""
        params = QmarkParams()
        where = filter_sql(flt, params)
        async with self._rc.execute(
            f"SELECT count(*) FROM events WHERE {where}", params.values
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def get_contact(self, object_id: int) -> ContactState | None:
        """The sync state of one contact."""
        async with self._rc.execute(
            "SELECT object_id, kind, target_id, stage, last_occurred_at FROM contacts"
            " WHERE object_id = ?",
            (object_id,),
        ) as cur:
            row = await cur.fetchone()
        return ContactState(*row) if row else None

    # -- replay and purge ------------------------------------------------------------

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        conn = self._wc
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                cur = await conn.execute(sql, params)
                count = cur.rowcount
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        return int(count)

    _REPLAY_SET = (
        "state = 'pending', reason = NULL, next_attempt_at = 0, attempt_floor = attempts,"
        " updated_at = ?"
    )

    async def replay(self, event_ids: Sequence[int], now: float) -> list[ReplayRefusal]:
        """Send closed events back to pending; refuse open, invalid or unknown ones."""
        refusals = []
        ok = []
        for event_id in event_ids:
            event = await self.get_event(event_id)
            if event is None:
                refusals.append(ReplayRefusal(event_id, "no such event"))
            elif event.state in OPEN_STATES:
                refusals.append(
                    ReplayRefusal(event_id, f"the event is {event.state}: already queued")
                )
            elif event.state == "invalid":
                refusals.append(ReplayRefusal(event_id, "an invalid event cannot be processed"))
            else:
                ok.append(event_id)
        for event_id in ok:
            await self._write(
                f"UPDATE events SET {self._REPLAY_SET} WHERE id = ?"
                " AND state NOT IN ('pending', 'retrying', 'invalid')",
                (now, event_id),
            )
        if ok:
            self._notify()
        return refusals

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def replay_matching(
        self,
        flt: EventFilter,
        now: float,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Replay every closed, valid event matching ``flt``, ``chunk`` rows a transaction."""
        total = 0
        last_id = None
        while True:
            params = QmarkParams()
            where = filter_sql(flt, params)
            where += " AND state NOT IN ('pending', 'retrying', 'invalid')"
            if last_id is not None:
                where += f" AND id < {params(last_id)}"
            async with self._rc.execute(
                f"SELECT id FROM events WHERE {where} ORDER BY id DESC LIMIT ?",
                (*params.values, chunk),
            ) as cur:
                ids = [row[0] for row in await cur.fetchall()]
            if not ids:
                break
            marks = ",".join("?" * len(ids))
            total += await self._write(
                f"UPDATE events SET {self._REPLAY_SET} WHERE id IN ({marks})"
                " AND state NOT IN ('pending', 'retrying', 'invalid')",
                (now, *ids),
            )
            last_id = ids[-1]
            self._notify()
            if progress is not None:
                progress(total)
        return total

    async def purge(self, flt: EventFilter, chunk: int = 1000) -> int:
        """Delete matching events (and their history) ``chunk`` rows a transaction."""
        total = 0
        while True:
            params = QmarkParams()
            where = filter_sql(flt, params)
            async with self._rc.execute(
                f"SELECT id FROM events WHERE {where} ORDER BY id LIMIT ?",
                (*params.values, chunk),
            ) as cur:
                ids = [row[0] for row in await cur.fetchall()]
            if not ids:
                return total
            marks = ",".join("?" * len(ids))
            conn = self._wc
            async with self._lock:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    await conn.execute(
                        f"DELETE FROM event_history WHERE event_id IN ({marks})", ids
                    )
                    cur2 = await conn.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)
                    total += cur2.rowcount
                    await conn.execute("COMMIT")
                except BaseException:
                    await conn.execute("ROLLBACK")
                    raise

    # -- dry-run target records ------------------------------------------------------

    async def upsert_records(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
    ) -> list[tuple[str, bool]]:
        """Merge fields into dry-run records ``(kind, hubspot_id, fields)``, in one commit.

        Returns each record's id and whether it was created.
        """
        conn = self._wc
        out = []
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for kind, hubspot_id, fields in items:
                    async with conn.execute(
                        "SELECT fields FROM records WHERE hubspot_id = ? AND kind = ?",
                        (hubspot_id, kind),
                    ) as cur:
                        row = await cur.fetchone()
                    merged = {**(orjson.loads(row[0]) if row else {}), **fields}
                    target_id = f"dry-{kind}-{hubspot_id}"
                    await conn.execute(
                        "INSERT INTO records(hubspot_id, kind, target_id, fields, upserted_at)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(hubspot_id, kind) DO UPDATE SET"
                        " fields = excluded.fields, upserted_at = excluded.upserted_at",
                        (hubspot_id, kind, target_id, orjson.dumps(merged).decode(), now),
                    )
                    out.append((target_id, row is None))
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        return out

    async def delete_records(self, hubspot_id: str) -> int:
        """Delete the dry-run Lead and Contact of a HubSpot id."""
        return await self._write("DELETE FROM records WHERE hubspot_id = ?", (hubspot_id,))

    async def list_records(self, kind: str | None = None) -> list[TargetRecord]:
        """What the dry-run target holds, newest upsert first."""
        sql = "SELECT hubspot_id, kind, target_id, fields, upserted_at FROM records"
        params: tuple[Any, ...] = ()
        if kind:
            sql += " WHERE kind = ?"
            params = (kind,)
        async with self._rc.execute(sql + " ORDER BY upserted_at DESC", params) as cur:
            rows = await cur.fetchall()
        return [TargetRecord(r[0], r[1], r[2], orjson.loads(r[3]), float(r[4])) for r in rows]
