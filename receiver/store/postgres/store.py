"""The PostgreSQL event store: asyncpg pool, group commit, leases, LISTEN/NOTIFY.

Several stateless instances share one database. What makes that safe:

- **Ingest** queues each webhook request's events; a writer task takes everything
  queued (two writers overlap, so one group is sent while the other is flushed) and
  inserts it with one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT
  (dedup_key) DO NOTHING RETURNING`` statement, committed with ``synchronous_commit=on``
  before any request in the group is answered (group commit, as the SQLite store).
- **Claims** lease whole contacts. The lease row of each candidate contact is locked
  with ``FOR UPDATE SKIP LOCKED`` and given an owner and an expiry in one transaction,
  so two instances never hold one contact, and a dead instance's leases simply expire
  (see :mod:`receiver.store.postgres.dispatch`).
- **Wake-ups** cross instances through ``LISTEN/NOTIFY`` (see
  :mod:`receiver.store.postgres.listen`); the dispatcher's polling is the fallback.
- **Counts** come from an insert-only delta table kept by statement-level triggers,
  folded in the background (see :mod:`receiver.store.postgres.schema`).
- **Migrations** run on open under a transaction-scoped advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

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
from receiver.ops.logging import get_logger
from receiver.ops.tasks import cancel_and_wait
from receiver.store import sql as shared
from receiver.store.base import IngestResult, ReplayRefusal
from receiver.store.group_commit import GroupCommitter, IngestRequest, first_copies
from receiver.store.health import storage_failure
from receiver.store.postgres import bulk as bulk
from receiver.store.postgres import dispatch as dispatch
from receiver.store.postgres import failures as failures
from receiver.store.postgres import records as records
from receiver.store.postgres import sessions as sessions
from receiver.store.postgres import sql as q
from receiver.store.postgres import sync_settings as sync_settings
from receiver.store.postgres.jobs import PostgresJobs
from receiver.store.postgres.listen import NotifyListener
from receiver.store.postgres.schema import migrate
from receiver.store.replay import purge_in_chunks, replay_in_chunks
from receiver.store.rows import DollarParams, event_from_row, storable

log = get_logger("receiver.store.postgres.store")

POOL_MAX = 10
FOLD_S = 5.0
FOLD_MIN_ROWS = 200
CONNECT_TIMEOUT_S = 10.0
# Two group-commit writers: one builds and sends the next group while the other waits
# for its commit to be flushed (PostgreSQL flushes concurrent commits together).
WRITERS = 2


class PostgresStore(PostgresJobs):
    """:class:`~receiver.store.base.EventStore` on a PostgreSQL database shared by instances."""

    name = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.token = uuid.uuid4().hex  # tags this store's commits in NOTIFY payloads
        self._pool: Any = None
        self._writer = GroupCommitter(
            self._commit_group, self._notify, writers=WRITERS, storage_failure=storage_failure
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[], None]] = []
        self.listener: NotifyListener | None = None

    # -- lifecycle -------------------------------------------------------------------

    def _server_settings(self, **extra: str) -> dict[str, str]:
        settings = {"synchronous_commit": "on", "stagesync.instance": self.token}
        if "application_name" not in parse_qs(urlsplit(self.dsn).query):
            # Tells the instances apart in pg_stat_activity.
            settings["application_name"] = f"stagesync-{os.getpid()}"
        return {**settings, **extra}

    async def open(self) -> None:
        """Connect, migrate the schema, and start the writer, folder and listener tasks."""
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=POOL_MAX,
            server_settings=self._server_settings(),
            command_timeout=60,
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            async with self._pool.acquire() as conn:
                await migrate(conn)
                channel = str(await conn.fetchval(q.CHANNEL))
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self.listener = NotifyListener(self._listen_connection, channel, self.token, self._notify)
        self.listener.start()
        self._writer.start()
        self._tasks = [asyncio.create_task(self._fold_loop(), name="postgres-fold-counts")]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listener.connected.wait(), 5.0)

    async def _listen_connection(self) -> Any:
        settings = self._server_settings()
        return await asyncpg.connect(self.dsn, server_settings=settings, timeout=CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        """Answer every queued ingest, stop the background tasks, close the pool."""
        await self._writer.stop()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after this store's commits of new or replayed events, and on
        any other instance's (through NOTIFY)."""
        self._listeners.append(callback)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def pool(self) -> Any:
        """The asyncpg pool (asserts the store is open)."""
        assert self._pool is not None, "store is not open"
        return self._pool

    async def ping(self) -> None:
        """Raise if the database does not answer, or its last webhook commit failed."""
        await self.pool.fetchval("SELECT 1")
        problem = self._writer.health.problem()
        if problem is not None:
            raise StoreError(f"webhook commits fail: {problem}")

    async def _fold_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLD_S)
            try:
                await self.fold_counts()
            except Exception as exc:
                log.warning("count_fold_failed", error=type(exc).__name__)

    async def fold_counts(self, min_rows: int = FOLD_MIN_ROWS) -> None:
        """Fold the count deltas into one row per (state, reason) once there are more than
        ``min_rows``; skipped while another instance is folding."""
        if await self.pool.fetchval("SELECT count(*) FROM event_count_deltas") <= min_rows:
            return  # not worth a write transaction
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(q.FOLD_LOCK):
                await conn.execute(q.FOLD)

    # -- ingest ----------------------------------------------------------------------

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Queue events for the next group commit and wait until they are durable."""
        return await self._writer.submit(events, now)

    async def _commit_group(self, group: list[IngestRequest]) -> list[IngestResult]:
        requests = [(r.events, r.now) for r in group]
        news, tally = first_copies(requests)
        columns = q.ingest_columns(requests, news)
        inserted: set[bytes] = set()
        if columns[0]:
            rows = await self.pool.fetch(q.INGEST, *columns)
            inserted = {bytes(r[0]) for r in rows}
        return tally.results(inserted)

    # -- dispatch --------------------------------------------------------------------

    async def claim(
        self, owner: str, now: float, lease_s: float, max_contacts: int
    ) -> list[ClaimedContact]:
        """Lease up to ``max_contacts`` contacts with due events, oldest first."""
        return await dispatch.claim(self.pool, owner, now, lease_s, max_contacts)

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
        return await dispatch.record(self.pool, owner, outcomes, contacts, release, now)

    async def renew_leases(
        self, owner: str, object_ids: Sequence[int], now: float, until: float
    ) -> list[int]:
        """Move the leases ``owner`` still holds on to ``until``."""
        rows = await self.pool.fetch(q.RENEW_LEASES, list(object_ids), owner, now, until)
        return sorted(row[0] for row in rows)

    async def next_due_at(self, now: float) -> float | None:
        """Earliest ``next_attempt_at`` among open events."""
        value = await self.pool.fetchval(shared.NEXT_DUE)
        return float(value) if value is not None else None

    # -- reading ---------------------------------------------------------------------

    async def counts(self) -> dict[str, dict[str, int]]:
        """Events per state and reason, summed from the small delta table."""
        out: dict[str, dict[str, int]] = {}
        for state, reason, n in await self.pool.fetch(q.COUNTS):
            out.setdefault(state, {})[reason] = int(n)
        return out

    async def oldest_open_received_at(
        self, due_at: float | None = None, *, in_flight: bool = True
    ) -> float | None:
        """``received_at`` of the oldest open event (through the partial index)."""
        if due_at is None:
            value = await self.pool.fetchval(shared.oldest_open_sql(None))
        else:
            sql = shared.oldest_open_sql("$1", in_flight=in_flight)
            value = await self.pool.fetchval(sql, due_at)
        return float(value) if value is not None else None

    async def last_synced_at(self) -> float | None:
        """When an event last ended ``synced``."""
        value = await self.pool.fetchval(shared.LAST_SYNCED)
        return float(value) if value is not None else None

    async def get_event(self, event_id: int) -> StoredEvent | None:
        """One event, or None."""
        row = await self.pool.fetchrow(shared.event_sql("$1"), event_id)
        return event_from_row(row) if row is not None else None

    async def history(self, event_id: int) -> list[HistoryEntry]:
        """The attempts of one event, oldest first."""
        rows = await self.pool.fetch(
            f"SELECT {shared.HISTORY_COLUMNS} FROM event_history WHERE event_id = $1 ORDER BY seq",
            event_id,
        )
        return [HistoryEntry(*row) for row in rows]

    async def list_events(
        self, flt: EventFilter, limit: int, before_id: int | None = None
    ) -> list[StoredEvent]:
        """Matching events, newest first, below ``before_id``."""
        params = DollarParams()
        sql = shared.newest_sql(flt, params, limit, before_id)
        return [event_from_row(row) for row in await self.pool.fetch(sql, *params.values)]

    async def count_matching(self, flt: EventFilter) -> int:
        """How many events match."""
        params = DollarParams()
        sql = shared.count_matching_sql(flt, params)
        return int(await self.pool.fetchval(sql, *params.values))

    async def get_contact(self, object_id: int) -> ContactState | None:
        """The sync state of one contact."""
        row = await self.pool.fetchrow(shared.contact_sql("$1"), object_id)
        return ContactState(*row) if row is not None else None

    # -- replay and purge ------------------------------------------------------------

    async def replay(self, event_ids: Sequence[int], now: float) -> list[ReplayRefusal]:
        """Send closed events back to pending; refuse open, invalid or unknown ones."""
        refusals, replayed = await bulk.replay(self.pool, event_ids, now)
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
        return await replay_in_chunks(
            partial(bulk.replay_chunk, self.pool, flt, now, chunk), self._notify, progress
        )

    async def purge(self, flt: EventFilter, chunk: int = 1000) -> int:
        """Delete matching events (and their history) ``chunk`` rows a transaction."""
        return await purge_in_chunks(partial(bulk.purge_chunk, self.pool, flt, chunk))

    # -- dry-run target records ------------------------------------------------------

    async def upsert_records(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
    ) -> list[tuple[str, bool]]:
        """Merge fields into dry-run records ``(kind, hubspot_id, fields)``, in one commit.

        Returns each record's id and whether it was created.
        """
        return await records.upsert(self.pool, items, now)

    async def delete_records(self, hubspot_id: str) -> int:
        """Delete the dry-run Lead and Contact of a HubSpot id."""
        return await records.delete(self.pool, hubspot_id)

    async def list_records(self, kind: str | None = None) -> list[TargetRecord]:
        """What the dry-run target holds, newest upsert first."""
        return await records.listing(self.pool, kind)

    # -- sync settings and failure groups ---------------------------------------------

    async def load_sync_settings(self) -> SavedSyncSettings | None:
        """The saved sync settings, or None while nothing was ever saved."""
        return await sync_settings.load(self.pool)

    async def sync_settings_version(self) -> int:
        """The sync settings' version (0: nothing saved)."""
        return await sync_settings.version(self.pool)

    async def save_sync_settings(
        self,
        values: SyncValues | None,
        expected_version: int,
        at: float,
        by: str,
        changes: dict[str, Any],
    ) -> SavedSyncSettings | None:
        """Compare-and-set on the version, with a history entry; None on a conflict."""
        return await sync_settings.save(self.pool, values, expected_version, at, by, changes)

    async def sync_settings_history(
        self, limit: int = 100, before: int | None = None
    ) -> list[SyncSettingsChange]:
        """The sync settings' changes, newest first; with ``before``, only older versions."""
        return await sync_settings.history(self.pool, limit, before)

    async def failure_groups(self, samples: int = 5, limit: int = 50) -> list[FailureGroup]:
        """Failed events grouped by error code, largest group first."""
        return await failures.failure_groups(self.pool, samples, limit)

    # -- admin page sessions -----------------------------------------------------------

    async def start_admin_session(self, session_id: str, expires_at: float, now: float) -> None:
        """Remember a login until ``expires_at``; forget the expired ones."""
        await sessions.start(self.pool, session_id, expires_at, now)

    async def admin_session_open(self, session_id: str, now: float) -> bool:
        """Whether a login is remembered and has not expired."""
        return await sessions.is_open(self.pool, session_id, now)

    async def end_admin_session(self, session_id: str) -> None:
        """Forget a login."""
        await sessions.end(self.pool, session_id)
