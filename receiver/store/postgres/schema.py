"""PostgreSQL schema, as numbered migrations applied on start under an advisory lock.

Every object lives in the connection's current schema (the first of ``search_path``), so
several deployments, or tests, can share one database in separate schemas.

Counts per state and reason avoid a hot counter row. A single ``event_counts`` row per
state, updated by every transaction, would serialize every ingest and every record across
all instances on its row lock. Instead, statement-level triggers (with transition tables)
*append* one row per (state, reason) a statement changes to ``event_count_deltas``, an
insert-only heap without indexes, so concurrent transactions never touch the same row.
Reading the counts sums that small table; the store folds it periodically (all rows into
one per pair, under a try-lock so instances do not fold at once), which keeps it at a few
hundred rows however many events there are.

The same triggers send ``NOTIFY`` on the store's channel when a statement makes events
``pending`` (an ingest or a replay, from any instance or the CLI), with the sending
connection's instance token as payload, so a store can ignore its own notifications.
"""

from __future__ import annotations

from typing import Any

from receiver.errors import ConfigError, StoreError
from receiver.store.postgres.sql import MIGRATE_LOCK
from receiver.store.sql import OPEN_SQL

SCHEMA_TABLE = "stagesync_schema"


_NOTIFY = """
    IF EXISTS (SELECT 1 FROM new_rows WHERE state = 'pending') THEN
        PERFORM pg_notify('stagesync:' || current_schema(),
                          coalesce(current_setting('stagesync.instance', true), ''));
    END IF;
"""

MIGRATIONS: list[list[str]] = [
    [
        "CREATE SEQUENCE events_id_seq",
        """
        CREATE TABLE events (
            id BIGINT PRIMARY KEY DEFAULT nextval('events_id_seq'),
            dedup_key BYTEA NOT NULL UNIQUE,
            state TEXT NOT NULL,
            reason TEXT,
            object_id BIGINT,
            subscription_type TEXT,
            occurred_at BIGINT,
            stage TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            attempt_floor INTEGER NOT NULL DEFAULT 0,
            last_error_code TEXT,
            last_error_message TEXT,
            received_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            target_kind TEXT,
            target_id TEXT,
            coalesced_into BIGINT,
            raw BYTEA NOT NULL
        )
        """,
        "ALTER SEQUENCE events_id_seq OWNED BY events.id",
        # Partial indexes over open events only: they stay small however many closed
        # events are kept, and INCLUDE lets the claim scan run index-only.
        f"""CREATE INDEX events_open ON events(id) INCLUDE (object_id, next_attempt_at)
            WHERE {OPEN_SQL}""",
        f"CREATE INDEX events_open_contact ON events(object_id) WHERE {OPEN_SQL}",
        f"CREATE INDEX events_open_due ON events(next_attempt_at) WHERE {OPEN_SQL}",
        "CREATE INDEX events_object ON events(object_id, id)",
        "CREATE INDEX events_state ON events(state, id)",
        "CREATE INDEX events_received ON events(received_at)",
        """
        CREATE TABLE event_history (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id BIGINT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            outcome TEXT NOT NULL,
            error_code TEXT,
            error_message TEXT
        )
        """,
        "CREATE INDEX event_history_event ON event_history(event_id, seq)",
        """
        CREATE TABLE event_count_deltas (
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            n BIGINT NOT NULL
        )
        """,
        f"""
        CREATE FUNCTION events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO event_count_deltas(state, reason, n)
            SELECT state, coalesce(reason, ''), count(*) FROM new_rows GROUP BY 1, 2;
            {_NOTIFY}
            RETURN NULL;
        END $$
        """,
        f"""
        CREATE FUNCTION events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO event_count_deltas(state, reason, n)
            SELECT state, reason, sum(n) FROM (
                SELECT state, coalesce(reason, '') AS reason, -1 AS n FROM old_rows
                UNION ALL
                SELECT state, coalesce(reason, ''), 1 FROM new_rows
            ) AS d
            GROUP BY 1, 2 HAVING sum(n) <> 0;
            {_NOTIFY}
            RETURN NULL;
        END $$
        """,
        """
        CREATE FUNCTION events_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO event_count_deltas(state, reason, n)
            SELECT state, coalesce(reason, ''), -count(*) FROM old_rows GROUP BY 1, 2;
            RETURN NULL;
        END $$
        """,
        """CREATE TRIGGER events_count_insert AFTER INSERT ON events
           REFERENCING NEW TABLE AS new_rows
           FOR EACH STATEMENT EXECUTE FUNCTION events_inserted()""",
        """CREATE TRIGGER events_count_update AFTER UPDATE ON events
           REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
           FOR EACH STATEMENT EXECUTE FUNCTION events_updated()""",
        """CREATE TRIGGER events_count_delete AFTER DELETE ON events
           REFERENCING OLD TABLE AS old_rows
           FOR EACH STATEMENT EXECUTE FUNCTION events_deleted()""",
        """
        CREATE TABLE contacts (
            object_id BIGINT PRIMARY KEY,
            kind TEXT,
            target_id TEXT,
            stage TEXT,
            last_occurred_at BIGINT,
            updated_at DOUBLE PRECISION NOT NULL
        )
        """,
        # One row per contact ever claimed; a release sets ``until`` to 0 rather than
        # deleting, so claims lock existing rows with FOR UPDATE SKIP LOCKED. ``instance``
        # is the claiming connection's application_name (``stagesync-<pid>``), for operators.
        """
        CREATE TABLE contact_leases (
            object_id BIGINT PRIMARY KEY,
            owner TEXT,
            until DOUBLE PRECISION NOT NULL,
            instance TEXT
        )
        """,
        """
        CREATE TABLE records (
            hubspot_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            target_id TEXT NOT NULL,
            fields JSONB NOT NULL,
            upserted_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (hubspot_id, kind)
        )
        """,
        "CREATE INDEX records_upserted ON records(upserted_at)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL)",
    ],
    # Sync settings saved through the admin API, the page or the CLI (one row, version 0
    # until the first save), and every change. Failure groups read failed events by code.
    [
        """
        CREATE TABLE sync_settings (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            saved JSONB,
            updated_at DOUBLE PRECISION,
            updated_by TEXT
        )
        """,
        "INSERT INTO sync_settings (id, version) VALUES (1, 0)",
        """
        CREATE TABLE sync_settings_history (
            version INTEGER PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            by TEXT NOT NULL,
            changes JSONB NOT NULL
        )
        """,
        "CREATE INDEX events_failed_code ON events(last_error_code, id) WHERE state = 'failed'",
    ],
    # Backfill jobs and reconciliation (receiver.jobs); see receiver.store.postgres.jobs.
    [
        """
        CREATE TABLE backfills (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            state TEXT NOT NULL,
            stages TEXT NOT NULL,
            found BIGINT NOT NULL DEFAULT 0,
            queued BIGINT NOT NULL DEFAULT 0,
            pages BIGINT NOT NULL DEFAULT 0,
            calls BIGINT NOT NULL DEFAULT 0,
            cursor TEXT NOT NULL DEFAULT '{}',
            cancel_requested BOOLEAN NOT NULL DEFAULT false,
            error TEXT,
            owner TEXT,
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION
        )
        """,
        # One running backfill at most, across instances: the insert of a second fails.
        "CREATE UNIQUE INDEX backfills_one_running ON backfills(state) WHERE state = 'running'",
        """
        CREATE TABLE reconcile_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            watermark DOUBLE PRECISION,
            last_run_at DOUBLE PRECISION,
            found BIGINT NOT NULL DEFAULT 0,
            owner TEXT,
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
        )
        """,
        "INSERT INTO reconcile_state (id) VALUES (1)",
        "ALTER TABLE contacts ADD COLUMN record_digest TEXT",
    ],
    # The admin page's sessions: a logout deletes its row, so its cookie dies with it.
    [
        """
        CREATE TABLE admin_sessions (
            id TEXT PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )
        """,
    ],
]


async def migrate(conn: Any) -> None:
    """Bring the schema to the newest version in one transaction, under an advisory lock
    so that instances starting together migrate one after the other."""
    async with conn.transaction():
        if await conn.fetchval("SELECT current_setting('transaction_read_only') = 'on'"):
            # A standby, or default_transaction_read_only: every webhook would get a 503.
            raise StoreError(
                "the database only takes reads (a standby, or default_transaction_read_only"
                " is on): point STAGESYNC_DATABASE_URL at the primary"
            )
        await conn.execute(MIGRATE_LOCK)
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", SCHEMA_TABLE):
            await conn.execute(f"CREATE TABLE {SCHEMA_TABLE} (version INTEGER NOT NULL)")
        version = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}"))
        if version > len(MIGRATIONS):
            raise ConfigError(
                [
                    f"STAGESYNC_DATABASE_URL: the database schema is version {version},"
                    f" newer than this stagesync knows ({len(MIGRATIONS)}); upgrade stagesync"
                ]
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(f"DELETE FROM {SCHEMA_TABLE}")
            await conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES ($1)", number)
