"""SQLite schema, as numbered migrations applied on start.

Counts per state and reason live in ``event_counts``, kept by triggers, so ``/status``
and the metrics read a handful of rows instead of scanning the events table. Partial
indexes cover only open (pending or retrying) events, so they stay small however many
closed events are kept.
"""

from __future__ import annotations

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
        "CREATE INDEX events_open ON events(id) WHERE state IN ('pending', 'retrying')",
        """CREATE INDEX events_open_contact ON events(object_id)
           WHERE state IN ('pending', 'retrying')""",
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
]
