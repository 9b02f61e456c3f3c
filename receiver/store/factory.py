"""Pick the event store from ``DATABASE_URL``."""

from __future__ import annotations

from receiver.store.base import EventStore
from receiver.store.sqlite.store import SQLiteStore, sqlite_path


def make_store(database_url: str) -> EventStore:
    """A not-yet-opened store for ``sqlite:///PATH`` or ``postgresql://...``."""
    if database_url.startswith(("postgresql://", "postgres://")):
        from receiver.store.postgres.store import PostgresStore

        return PostgresStore(database_url)
    return SQLiteStore(sqlite_path(database_url))
