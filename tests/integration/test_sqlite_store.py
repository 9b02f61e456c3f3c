"""SQLite-only behaviours of the event store: schema versions, the ingest statement's
conflict handling, closing with requests in flight, the claim's indexes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.errors import ConfigError, StoreError
from receiver.hubspot.payload import to_new_events
from receiver.models import EventFilter
from receiver.store.base import IngestResult
from receiver.store.group_commit import GroupTally
from receiver.store.sqlite import dispatch as sqlite_dispatch
from receiver.store.sqlite import ingest as sqlite_ingest
from receiver.store.sqlite.dispatch import _DUE_CONTACTS, contact_events_sql
from receiver.store.sqlite.ingest import GroupRows, group_rows, insert_group
from receiver.store.sqlite.schema import CONTACT_MATCH, MIGRATIONS, migrate
from receiver.store.sqlite.store import SQLiteStore, _check_writable
from receiver.store.sqlite.thread import connect
from tests.support.webhooks import event

NOW = 1_700_000_000.0


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SQLiteStore]:
    """A SQLite store on ``path``, open for the block and closed after it."""
    store = SQLiteStore(str(path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def count_where(path: Path, where: str) -> int:
    """How many events of the file at ``path`` match ``where``, read on a connection of its own."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM events WHERE {where}").fetchone()[0])


def plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    """SQLite's query plan for ``sql``, its lines joined."""
    return " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    conn.close()
    return {r[0] for r in rows}


async def test_opening_a_version_1_file_drops_the_redundant_open_contact_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    assert "events_open_contact" in indexes(path)
    async with opened(path):
        pass  # opening migrates
    assert "events_open_contact" not in indexes(path)
    assert {"events_open", "events_object"} <= indexes(path)


async def test_opening_a_version_2_file_lists_its_events_in_the_index_by_contact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        for statement in migration:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO events (dedup_key, state, object_id, received_at, updated_at, raw)"
        " VALUES (x'01', 'pending', 42, 0, 0, x'7b7d')"
    )
    conn.close()
    async with opened(path) as store:
        [contact] = await store.claim("me", NOW, 60, 10)
        assert contact.object_id == 42 and len(contact.events) == 1
    assert count_where(path, "listed") == 1


async def test_a_version_3_file_gets_the_unlisted_index_that_holds_the_contact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:3]:
        for statement in migration:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    async with opened(path):
        pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        columns = [row[2] for row in conn.execute("PRAGMA index_info(events_unlisted)")]
    assert columns == ["id", "object_id", "listed"]


async def test_webhook_events_stay_out_of_the_contact_index_until_a_claim_lists_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "listed.db"
    async with opened(path) as store:
        # More events for contact 7 than the claim's scan reads: the claim still takes all.
        await store.ingest(to_new_events([event(7, "lead", event_id=n) for n in range(50)]), NOW)
        assert count_where(path, "listed") == 0
        [contact] = await store.claim("me", NOW, 60, 1)
        assert len(contact.events) == 50
        assert count_where(path, "NOT listed") == 0
        await store.ingest(to_new_events([event(7, "customer", event_id=99)]), NOW)
        # A filter by contact finds the listed events and the one not listed yet alike.
        by_contact = EventFilter(object_id=7)
        assert await store.count_matching(by_contact) == 51
        assert len(await store.list_events(by_contact, limit=100)) == 51
        assert await store.count_matching(EventFilter(object_id=8)) == 0


def test_a_claim_lists_every_new_event_unless_a_webhook_commit_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_dispatch, "LIST_CHUNK", 10)
    conn = connect(str(tmp_path / "chunks.db"))
    migrate(conn)
    for n in range(50):
        group = group_rows([(to_new_events([event(n, "lead", event_id=n)]), NOW)])
        insert_group(conn, group)
    # A webhook commit waits: one chunk, and only its contacts are taken.
    busy = sqlite_dispatch.claim(conn, "me", NOW, 60, 100, contended=lambda: True)
    assert sorted(c.object_id for c in busy) == list(range(10))
    # Nobody waits: the claim lists the other 40 and takes them all.
    idle = sqlite_dispatch.claim(conn, "me", NOW, 60, 100, contended=lambda: False)
    assert sorted(c.object_id for c in idle) == list(range(10, 50))
    conn.close()


async def test_opening_a_file_of_a_newer_schema_version_is_a_config_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    store = SQLiteStore(str(path))
    with pytest.raises(ConfigError) as caught:
        await store.open()
    assert caught.value.problems == [
        f"database schema version {len(MIGRATIONS) + 1} is newer than this stagesync knows"
        f" ({len(MIGRATIONS)}); upgrade stagesync"
    ]


def test_claim_queries_read_the_open_and_per_contact_indexes(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "plan.db", isolation_level=None)
    migrate(conn)
    due = plan(conn, _DUE_CONTACTS, (0,) * 4)
    events = plan(conn, contact_events_sql(2), (1, 2, 0))
    conn.close()
    assert "USING INDEX events_open" in due
    assert "USING INDEX events_object" in events


def test_new_events_are_found_by_contact_and_listed_from_index_pages_only(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "plan.db", isolation_level=None)
    migrate(conn)
    by_contact = plan(conn, "SELECT id FROM events WHERE " + CONTACT_MATCH.format("?", "?"), (1, 1))
    listing = plan(conn, sqlite_dispatch._LIST_NEW, (10,))
    conn.close()
    assert "USING INDEX events_object (object_id=?)" in by_contact
    assert "USING COVERING INDEX events_unlisted" in by_contact
    assert "USING COVERING INDEX events_unlisted" in listing


def test_a_row_breaking_not_null_fails_the_ingest_statement_instead_of_being_skipped(
    tmp_path: Path,
) -> None:
    store_path = str(tmp_path / "ingest.db")
    conn = connect(store_path)
    migrate(conn)
    raw = b'{"eventId": 1}'
    # state NULL: OR IGNORE would skip the row and the event would count as a duplicate.
    batch = GroupRows(
        GroupTally(firsts=[[b"k" * 24]], valid=[1], invalid=[0]),
        rows=[(None, 1, "contact.creation", 1, None, 1, len(raw), None, None, 1, 1)],
        keys=[b"k" * 24],
        raws=[raw],
        nows=[1.0],
    )
    try:
        with pytest.raises(sqlite3.IntegrityError):
            insert_group(conn, batch)
        batch.exact_json = False  # the bound-parameter path too
        with pytest.raises(sqlite3.IntegrityError):
            insert_group(conn, batch)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        conn.close()


async def test_close_answers_every_ingest_request_queued_or_being_committed(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "close.db"))
    await store.open()
    try:
        tasks = [
            asyncio.create_task(store.ingest(to_new_events([event(n, "lead")]), NOW))
            for n in range(1, 201)
        ]
        await asyncio.sleep(0)  # let the writer take a first group
    finally:
        await store.close()
    assert all(t.done() for t in tasks)
    assert [t.result() for t in tasks] == [IngestResult(1, 0, 0)] * 200
    async with opened(tmp_path / "close.db") as store:
        assert await store.count_matching(EventFilter()) == 200


async def test_upsert_of_one_record_twice_in_a_call_merges_into_the_first(
    tmp_path: Path,
) -> None:
    async with opened(tmp_path / "records.db") as store:
        first = await store.upsert_records(
            [("lead", "7", {"a": 1, "b": 1}), ("lead", "7", {"b": 2}), ("contact", "7", {})],
            NOW,
        )
        again = await store.upsert_records([("lead", "7", {"c": 3})], NOW + 1)
        records = {(r.kind, r.hubspot_id): r.fields for r in await store.list_records()}
    assert first == [("dry-lead-7", True), ("dry-lead-7", False), ("dry-contact-7", True)]
    assert again == [("dry-lead-7", False)]
    assert records == {("lead", "7"): {"a": 1, "b": 2, "c": 3}, ("contact", "7"): {}}


def file_size(path: str) -> int:
    return os.stat(path).st_size


def synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_bookkeeping_commits_skip_the_flush_and_replays_and_webhooks_keep_it(
    tmp_path: Path,
) -> None:
    from receiver.store.sqlite.thread import SQLiteWriter
    from receiver.store.sqlite.write_lock import WriteLock

    writer = SQLiteWriter(str(tmp_path / "sync.db"), WriteLock())
    await writer.open()
    try:
        normal, full = 1, 2
        assert await writer.transaction(synchronous) == normal
        assert await writer.transaction(synchronous, durable=True) == full
        assert await writer.transaction(synchronous) == normal  # set back afterwards
    finally:
        await writer.close()
    ingest = connect(str(tmp_path / "sync.db"))
    try:
        assert synchronous(ingest) == full
        assert ingest.execute("PRAGMA wal_autocheckpoint").fetchone()[0] >= 10_000
        assert ingest.execute("PRAGMA journal_size_limit").fetchone()[0] == 64 * 1024 * 1024
    finally:
        ingest.close()


async def test_the_checkpointer_copies_the_wal_back_so_commits_start_it_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wal.db"
    wal = f"{path}-wal"

    async def burst(store: SQLiteStore, first: int) -> None:
        # Five commits of 500 new events each, ids from ``first * 1000``.
        for n in range(first, first + 5):
            ids = range(n * 1000, n * 1000 + 500)
            await store.ingest(to_new_events([event(i, "lead", event_id=i) for i in ids]), NOW)

    async with opened(path) as store:
        await burst(store, 0)
        grown = file_size(wal)
        # Past the idle interval: the checkpointer has copied the WAL back, with no
        # commit's help.
        await asyncio.sleep(0.6)
        await burst(store, 5)
        # The second burst reused the WAL from its start instead of growing it.
        assert file_size(wal) <= grown * 1.2


# -- writability ------------------------------------------------------------------------


async def test_a_database_sqlite_can_only_read_is_refused_naming_the_cause(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    async with opened(path):
        pass
    # What SQLite does, unasked, with a file this user may not write (as root, chmod
    # cannot show it): open it read-only.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        with pytest.raises(StoreError, match="read-only for this user"):
            _check_writable(conn)
    finally:
        conn.close()
    writable = connect(str(path))
    try:
        _check_writable(writable)  # and the probe leaves nothing behind
        probes = "SELECT count(*) FROM meta WHERE key LIKE '%probe%'"
        assert writable.execute(probes).fetchone() == (0,)
        assert not writable.in_transaction
    finally:
        writable.close()


async def test_failing_webhook_commits_make_ping_fail_until_one_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(conn: sqlite3.Connection, batch: GroupRows) -> set[bytes] | None:
        raise sqlite3.OperationalError("database or disk is full")

    async with opened(tmp_path / "events.db") as store:
        monkeypatch.setattr(sqlite_ingest, "insert_group", full)
        with pytest.raises(sqlite3.OperationalError):
            await store.ingest(to_new_events([event(1, "lead")]), 1.0)
        with pytest.raises(StoreError, match="webhook commits fail: database or disk is full"):
            await store.ping()
        monkeypatch.setattr(sqlite_ingest, "insert_group", insert_group)
        assert (await store.ingest(to_new_events([event(2, "lead")]), 2.0)).accepted == 1
        await store.ping()
