"""The SQLite event store: WAL, ``synchronous=FULL``, group commit.

Every write holds the store's :class:`WriteLock`, so transactions never interleave, and
each transaction is one plain function run in one thread hop on a plain ``sqlite3``
connection: webhook ingest has a connection and a thread of its own
(:mod:`receiver.store.sqlite.ingest`) and commits each group of requests with a single
statement (one fsync), answering every request of the group after it; the dispatcher's
and the CLI's writes share another (:mod:`receiver.store.sqlite.thread`, with the
functions of :mod:`receiver.store.sqlite.dispatch` and :mod:`receiver.store.sqlite.bulk`).
Requests arriving during a commit form the next group, so the fsync cost is shared under
load and a lone request is never held back. Reads use a third connection (aiosqlite),
which WAL lets run beside writes, and a fourth copies the WAL back into the database
file (:mod:`receiver.store.sqlite.checkpoint`), so that no commit has to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import aiosqlite
import orjson

from receiver.errors import StoreError
from receiver.models import (
    ClaimedContact,
    ContactState,
    ContactUpdate,
    EventFilter,
    FailureGroup,
    HistoryEntry,
    NewEvent,
    Outcome,
    SavedSyncSettings,
    StoredEvent,
    SyncSettingsChange,
    SyncValues,
    TargetRecord,
)
from receiver.store import sql as shared
from receiver.store.base import IngestResult, ReplayRefusal
from receiver.store.replay import purge_in_chunks, replay_in_chunks
from receiver.store.rows import QmarkParams, event_from_row, storable
from receiver.store.sqlite import bulk as sqlite_bulk
from receiver.store.sqlite import dispatch as sqlite_dispatch
from receiver.store.sqlite import failures as sqlite_failures
from receiver.store.sqlite import sessions as sqlite_sessions
from receiver.store.sqlite import sync_settings as sqlite_sync_settings
from receiver.store.sqlite.checkpoint import Checkpointer
from receiver.store.sqlite.ingest import SQLiteIngest
from receiver.store.sqlite.jobs import SQLiteJobs
from receiver.store.sqlite.schema import CONTACT_MATCH, migrate
from receiver.store.sqlite.thread import PRAGMAS, SQLiteWriter, connect
from receiver.store.sqlite.write_lock import WriteLock

_WRITE_PROBE = "INSERT INTO meta(key, value) VALUES ('stagesync:write-probe', '')"


def _check_writable(conn: sqlite3.Connection) -> None:
    # SQLite opens a file it may not write read-only without a word, and the schema
    # check writes nothing when it is up to date: without this, the service would start
    # and answer every webhook 503 until restarted. The probe is rolled back.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_WRITE_PROBE)
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorname != "SQLITE_READONLY":
            raise
        raise StoreError(
            "the database is read-only for this user: check the owner and mode of the file"
            " and of its directory (SQLite writes -wal and -shm files beside it)"
        ) from None
    finally:
        conn.execute("ROLLBACK")


def sqlite_path(database_url: str) -> str:
    """The file path of a ``sqlite:///PATH`` URL."""
    return database_url.removeprefix("sqlite:///")


class SQLiteStore(SQLiteJobs):
    """:class:`~receiver.store.base.EventStore` on one SQLite file."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._r: aiosqlite.Connection | None = None
        # Webhook commits go before the dispatcher's writes (see write_lock.py).
        self._lock = WriteLock()
        self._writer: SQLiteWriter | None = None
        self._ingest: SQLiteIngest | None = None
        self._checkpointer: Checkpointer | None = None
        self._listeners: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------

    async def _connect_reader(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in PRAGMAS:
                await conn.execute(pragma)
        except BaseException:  # e.g. not a database: do not leak the connection's thread
            await conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Connect, migrate the schema and start the group-commit writer."""
        try:
            self._writer = SQLiteWriter(self.path, self._lock)
            await self._writer.open()
            await self._writer.run(migrate)
            await self._writer.run(_check_writable)
            self._r = await self._connect_reader()
            self._ingest = SQLiteIngest(partial(connect, self.path), self._lock, self._notify)
            await self._ingest.open()
            self._checkpointer = Checkpointer(self.path)
            await self._checkpointer.start()
        except BaseException:
            await self.close()  # leave no connection or thread behind
            raise

    async def close(self) -> None:
        """Answer every queued webhook request, finish the write in progress, then close."""
        if self._ingest is not None:
            await self._ingest.close()
            self._ingest = None
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._r is not None:
            await self._r.close()
            self._r = None

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each commit of new events."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def _rc(self) -> aiosqlite.Connection:
        assert self._r is not None, "store is not open"
        return self._r

    @property
    def _wr(self) -> SQLiteWriter:
        assert self._writer is not None, "store is not open"
        return self._writer

    async def ping(self) -> None:
        """Raise if the database does not answer, or its last webhook commit failed."""
        async with self._rc.execute("SELECT 1") as cur:
            await cur.fetchone()
        problem = self._ingest.health.problem() if self._ingest is not None else None
        if problem is not None:
            raise StoreError(f"webhook commits fail: {problem}")

    # -- ingest ----------------------------------------------------------------------

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Queue events for the next group commit and wait until they are durable."""
        assert self._ingest is not None, "store is not open"
        return await self._ingest.ingest(events, now)

    # -- dispatch --------------------------------------------------------------------

    async def claim(
        self, owner: str, now: float, lease_s: float, max_contacts: int
    ) -> list[ClaimedContact]:
        """Lease up to ``max_contacts`` contacts with due events, oldest first.

        New events are listed in the index by contact first, in the same transaction,
        until a webhook commit waits (see :data:`sqlite_dispatch.LIST_CHUNK`).
        """
        return await self._wr.transaction(
            sqlite_dispatch.claim, owner, now, lease_s, max_contacts, self._lock.contended
        )

    async def record(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        contacts: Sequence[ContactUpdate],
        release: Sequence[int],
        now: float,
    ) -> list[int]:
        """Record outcomes and contact state, and release leases, in one transaction."""
        outcomes, contacts = storable(outcomes, contacts)
        return await self._wr.transaction(
            sqlite_dispatch.record, owner, outcomes, contacts, release, now
        )

    async def renew_leases(
        self, owner: str, object_ids: Sequence[int], now: float, until: float
    ) -> list[int]:
        """Move the leases ``owner`` still holds on to ``until``."""
        return await self._wr.transaction(
            sqlite_dispatch.renew_leases, owner, object_ids, now, until
        )

    async def next_due_at(self, now: float) -> float | None:
        """Earliest ``next_attempt_at`` among open events."""
        async with self._rc.execute(shared.NEXT_DUE) as cur:
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

    async def oldest_open_received_at(
        self, due_at: float | None = None, *, in_flight: bool = True
    ) -> float | None:
        """``received_at`` of the oldest open event (through the partial index)."""
        due = None if due_at is None else "?1"
        # Named: without statistics SQLite may read events_state instead, every open event.
        sql = shared.oldest_open_sql(due, " INDEXED BY events_open", in_flight=in_flight)
        async with self._rc.execute(sql, () if due_at is None else (due_at,)) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def last_synced_at(self) -> float | None:
        """When an event last ended ``synced``."""
        async with self._rc.execute(shared.LAST_SYNCED) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def get_event(self, event_id: int) -> StoredEvent | None:
        """One event, or None."""
        async with self._rc.execute(shared.event_sql("?"), (event_id,)) as cur:
            row = await cur.fetchone()
        return event_from_row(row) if row else None

    async def history(self, event_id: int) -> list[HistoryEntry]:
        """The attempts of one event, oldest first."""
        async with self._rc.execute(
            f"SELECT {shared.HISTORY_COLUMNS} FROM event_history WHERE event_id = ? ORDER BY rowid",
            (event_id,),
        ) as cur:
            return [HistoryEntry(*row) for row in await cur.fetchall()]

    async def list_events(
        self, flt: EventFilter, limit: int, before_id: int | None = None
    ) -> list[StoredEvent]:
        """Matching events, newest first, below ``before_id``."""
        params = QmarkParams()
        sql = shared.newest_sql(flt, params, limit, before_id, CONTACT_MATCH)
        async with self._rc.execute(sql, params.values) as cur:
            return [event_from_row(row) for row in await cur.fetchall()]

    async def count_matching(self, flt: EventFilter) -> int:
        """How many events match."""
        params = QmarkParams()
        sql = shared.count_matching_sql(flt, params, CONTACT_MATCH)
        async with self._rc.execute(sql, params.values) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def get_contact(self, object_id: int) -> ContactState | None:
        """The sync state of one contact."""
        async with self._rc.execute(shared.contact_sql("?"), (object_id,)) as cur:
            row = await cur.fetchone()
        return ContactState(*row) if row else None

    # -- replay and purge ------------------------------------------------------------

    async def replay(self, event_ids: Sequence[int], now: float) -> list[ReplayRefusal]:
        """Send closed events back to pending; refuse open, invalid or unknown ones."""
        refusals, replayed = await self._wr.transaction(
            sqlite_bulk.replay, event_ids, now, durable=True
        )
        if replayed:
            self._notify()
        return refusals

    async def replay_matching(
        self,
        flt: EventFilter,
        now: float,
        chunk: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Replay every closed, valid event matching ``flt``, ``chunk`` rows a transaction."""

        async def replay_chunk(below_id: int | None) -> tuple[int, int | None]:
            return await self._wr.transaction(
                sqlite_bulk.replay_chunk, flt, now, chunk, below_id, durable=True
            )

        return await replay_in_chunks(replay_chunk, self._notify, progress)

    async def purge(self, flt: EventFilter, chunk: int = 1000) -> int:
        """Delete matching events (and their history) ``chunk`` rows a transaction."""
        return await purge_in_chunks(
            partial(self._wr.transaction, sqlite_bulk.purge_chunk, flt, chunk)
        )

    # -- dry-run target records ------------------------------------------------------

    async def upsert_records(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
    ) -> list[tuple[str, bool]]:
        """Merge fields into dry-run records ``(kind, hubspot_id, fields)``, in one commit.

        Returns each record's id and whether it was created.
        """
        return await self._wr.transaction(sqlite_bulk.upsert_records, items, now)

    async def delete_records(self, hubspot_id: str) -> int:
        """Delete the dry-run Lead and Contact of a HubSpot id."""
        return await self._wr.transaction(sqlite_bulk.delete_records, hubspot_id)

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

    # -- sync settings and failure groups ---------------------------------------------

    async def load_sync_settings(self) -> SavedSyncSettings | None:
        """The saved sync settings, or None while nothing was ever saved."""
        return await sqlite_sync_settings.load(self._rc)

    async def sync_settings_version(self) -> int:
        """The sync settings' version (0: nothing saved)."""
        return await sqlite_sync_settings.version(self._rc)

    async def save_sync_settings(
        self,
        values: SyncValues | None,
        expected_version: int,
        at: float,
        by: str,
        changes: dict[str, Any],
    ) -> SavedSyncSettings | None:
        """Compare-and-set on the version, with a history entry; None on a conflict."""
        return await self._wr.transaction(
            sqlite_sync_settings.save, values, expected_version, at, by, changes, durable=True
        )

    async def sync_settings_history(
        self, limit: int = 100, before: int | None = None
    ) -> list[SyncSettingsChange]:
        """The sync settings' changes, newest first; with ``before``, only older versions."""
        return await sqlite_sync_settings.history(self._rc, limit, before)

    async def failure_groups(self, samples: int = 5, limit: int = 50) -> list[FailureGroup]:
        """Failed events grouped by error code, largest group first."""
        return await sqlite_failures.failure_groups(self._rc, samples, limit)

    # -- admin page sessions -----------------------------------------------------------

    async def start_admin_session(self, session_id: str, expires_at: float, now: float) -> None:
        """Remember a login until ``expires_at``; forget the expired ones."""
        await self._wr.transaction(sqlite_sessions.start, session_id, expires_at, now)

    async def admin_session_open(self, session_id: str, now: float) -> bool:
        """Whether a login is remembered and has not expired."""
        async with self._rc.execute(sqlite_sessions.OPEN_SQL, (session_id, now)) as cur:
            return await cur.fetchone() is not None

    async def end_admin_session(self, session_id: str) -> None:
        """Forget a login."""
        await self._wr.transaction(sqlite_sessions.end, session_id)
