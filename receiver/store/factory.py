"""Pick the event store from ``DATABASE_URL``."""

from __future__ import annotations

import sqlite3

import asyncpg

from receiver.exceptions import StoreError
from receiver.store.base import EventStore
from receiver.store.sqlite import SQLiteStore, sqlite_path

#: What either store raises when the database, not the request, is the problem: a full
#: disk, a lost connection, a file it may not write.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    StoreError,
    sqlite3.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
    OSError,
)
STORAGE_UNAVAILABLE = "The database could not be read or written just now; try again shortly."


def make_store(database_url: str) -> EventStore:
    """A not-yet-opened store for ``sqlite:///PATH`` or ``postgresql://...``."""
    if database_url.startswith(("postgresql://", "postgres://")):
        from receiver.store.postgres import PostgresStore

        return PostgresStore(database_url)
    return SQLiteStore(sqlite_path(database_url))
