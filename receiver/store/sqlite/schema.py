"""SQLite schema, as numbered migrations applied on start.

Counts per state and reason live in ``event_counts``, kept by triggers, so ``/status``
and the metrics read a handful of rows instead of scanning the events table. The
indexes of open (pending or retrying) events and of unlisted events are partial, so they
stay small however many closed events are kept.

The index by contact, ``events_object``, holds only *listed* events. A webhook commit
inserts its events unlisted (``listed = 0``), so that it writes only pages at the end of
its indexes: an entry by contact lands on a random page, one per event, and those pages
were most of what a commit wrote to the WAL and flushed (batches of 100 events at 10
connections, ingest alone: about 38,000 events/s and an ack p99 of ~52 ms with them,
~60,000 and ~35 ms without). The dispatcher's claim lists unlisted events first, in its
own transaction, which is not flushed on its own and writes each page once for many
events (see ``sqlite_dispatch.LIST_CHUNK``). Unlisted events are the newest: those that
arrived since the last claim, more during a sustained burst or while the dispatcher
has no room for a claim. A lookup by contact (:data:`CONTACT_MATCH`) reads
``events_object`` for the listed ones and goes through ``events_unlisted`` for the
others; that index carries the contact id (and ``listed``, so that SQLite sees it as
covering), so the scan reads index pages only.
"""

from __future__ import annotations

import sqlite3

from receiver.errors import ConfigError
from receiver.store.sql import OPEN_SQL

MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            dedup_key BLOB NOT NULL UNIQUE,
            state TEXT NOT NULL,
            reason TEXT,
            object_id INTEGER,
            subscription_type TEXT,
            occurred_at INTEGER,
            stage TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            attempt_floor INTEGER NOT NULL DEFAULT 0,
            last_error_code TEXT,
            last_error_message TEXT,
            received_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            target_kind TEXT,
            target_id TEXT,
            coalesced_into INTEGER,
            raw BLOB NOT NULL
        )
        """,
        # OPEN_SQL is the text these were created with; the claim's queries repeat it,
        # as SQLite uses a partial index only for a query that names its condition.
        f"CREATE INDEX events_open ON events(id) WHERE {OPEN_SQL}",
        f"""CREATE INDEX events_open_contact ON events(object_id)
           WHERE {OPEN_SQL}""",
        "CREATE INDEX events_object ON events(object_id, id)",
        "CREATE INDEX events_state ON events(state, id)",
        "CREATE INDEX events_received ON events(received_at)",
        """
        CREATE TABLE event_history (
            event_id INTEGER NOT NULL,
            at REAL NOT NULL,
            outcome TEXT NOT NULL,
            error_code TEXT,
            error_message TEXT
        )
        """,
        "CREATE INDEX event_history_event ON event_history(event_id)",
        """
        CREATE TABLE event_counts (
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (state, reason)
        ) WITHOUT ROWID
        """,
        """
        CREATE TRIGGER events_count_insert AFTER INSERT ON events BEGIN
            INSERT INTO event_counts(state, reason, n)
            VALUES (new.state, coalesce(new.reason, ''), 1)
            ON CONFLICT(state, reason) DO UPDATE SET n = n + 1;
        END
        """,
        """
        CREATE TRIGGER events_count_update AFTER UPDATE OF state, reason ON events
        WHEN old.state IS NOT new.state OR old.reason IS NOT new.reason BEGIN
            UPDATE event_counts SET n = n - 1
            WHERE state = old.state AND reason = coalesce(old.reason, '');
            INSERT INTO event_counts(state, reason, n)
            VALUES (new.state, coalesce(new.reason, ''), 1)
            ON CONFLICT(state, reason) DO UPDATE SET n = n + 1;
        END
        """,
        """
        CREATE TRIGGER events_count_delete AFTER DELETE ON events BEGIN
            UPDATE event_counts SET n = n - 1
            WHERE state = old.state AND reason = coalesce(old.reason, '');
        END
        """,
        """
        CREATE TABLE contacts (
            object_id INTEGER PRIMARY KEY,
            kind TEXT,
            target_id TEXT,
            stage TEXT,
            last_occurred_at INTEGER,
            updated_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE contact_leases (
            object_id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            until REAL NOT NULL
        )
        """,
        """
        CREATE TABLE records (
            hubspot_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            target_id TEXT NOT NULL,
            fields TEXT NOT NULL,
            upserted_at REAL NOT NULL,
            PRIMARY KEY (hubspot_id, kind)
        )
        """,
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    ],
    # events_object(object_id, id) serves every lookup by contact; this second index on
    # object_id cost a random page per inserted row.
    ["DROP INDEX IF EXISTS events_open_contact"],
    # Events already stored are listed; see the module docstring.
    [
        "ALTER TABLE events ADD COLUMN listed INTEGER NOT NULL DEFAULT 1",
        "DROP INDEX events_object",
        "CREATE INDEX events_object ON events(object_id, id) WHERE listed",
        "CREATE INDEX events_unlisted ON events(id) WHERE NOT listed",
    ],
    # The unlisted events' index carries the contact id, so that a lookup by contact
    # reads index pages only. A migration of its own, not an edit of the one above:
    # databases already at version 3 have the narrower index.
    [
        "DROP INDEX events_unlisted",
        "CREATE INDEX events_unlisted ON events(id, object_id, listed) WHERE NOT listed",
    ],
    # Sync settings saved through the admin API, the page or the CLI (one row, version 0
    # until the first save), and every change. Failure groups read failed events by code.
    [
        """
        CREATE TABLE sync_settings (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            saved TEXT,
            updated_at REAL,
            updated_by TEXT
        )
        """,
        "INSERT INTO sync_settings (id, version) VALUES (1, 0)",
        """
        CREATE TABLE sync_settings_history (
            version INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            by TEXT NOT NULL,
            changes TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_failed_code ON events(last_error_code, id) WHERE state = 'failed'",
    ],
    # Backfill jobs and reconciliation (receiver.jobs); see receiver.store.sqlite.jobs.
    [
        """
        CREATE TABLE backfills (
            id INTEGER PRIMARY KEY,
            state TEXT NOT NULL,
            stages TEXT NOT NULL,
            found INTEGER NOT NULL DEFAULT 0,
            queued INTEGER NOT NULL DEFAULT 0,
            pages INTEGER NOT NULL DEFAULT 0,
            calls INTEGER NOT NULL DEFAULT 0,
            cursor TEXT NOT NULL DEFAULT '{}',
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0,
            started_at REAL NOT NULL,
            finished_at REAL
        )
        """,
        # One running backfill at most, whoever starts it: the insert of a second fails.
        "CREATE UNIQUE INDEX backfills_one_running ON backfills(state) WHERE state = 'running'",
        """
        CREATE TABLE reconcile_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            watermark REAL,
            last_run_at REAL,
            found INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0
        )
        """,
        "INSERT INTO reconcile_state (id) VALUES (1)",
        "ALTER TABLE contacts ADD COLUMN record_digest TEXT",
    ],
    # The admin page's sessions: a logout deletes its row, so its cookie dies with it.
    [
        """CREATE TABLE admin_sessions (
               id TEXT PRIMARY KEY,
               expires_at REAL NOT NULL
           )""",
    ],
]

# Events of one contact (two placeholders for the same id): the listed ones through the
# index by contact, the unlisted ones (the newest) by a scan of their own index, which
# holds the contact id.
CONTACT_MATCH = (
    "id IN (SELECT id FROM events INDEXED BY events_object WHERE object_id = {0} AND listed"
    " UNION ALL SELECT id FROM events INDEXED BY events_unlisted"
    " WHERE NOT listed AND object_id = {1})"
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema of ``conn``'s file up to date, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("PRAGMA user_version").fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise ConfigError(
                [
                    f"database schema version {version} is newer than this stagesync knows"
                    f" ({len(MIGRATIONS)}); upgrade stagesync"
                ]
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
