"""The storage backends a bench runs the service on: SQLite, and PostgreSQL when given.

A backend hands out a fresh database for each service start and counts the events in
it afterwards, which is how the bench checks that every acknowledged event was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import secrets
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

POSTGRES_ENV = "STAGESYNC_TEST_POSTGRES_DSN"


CLOSED = "('synced', 'skipped', 'failed')"


class Backend(Protocol):
    """Where the service under test keeps its events."""

    name: str

    def fresh_url(self) -> str:
        """A ``STAGESYNC_DATABASE_URL`` for a database the service has not used yet."""
        ...

    def count_events(self, url: str) -> int:
        """How many events the database at ``url`` holds (0 before the schema exists)."""
        ...

    def count_closed(self, url: str) -> int:
        """How many of them the dispatcher has closed (synced, skipped or failed)."""
        ...

    def drop(self, url: str) -> None:
        """Remove a database made by :meth:`fresh_url`."""
        ...


@dataclass
class SQLiteBackend:
    """A new SQLite file in the bench's work directory for each service start."""

    workdir: Path
    name: str = "sqlite"
    _n: int = 0

    def fresh_url(self) -> str:
        """``sqlite:///<workdir>/<name>-N.db``."""
        self._n += 1
        return f"sqlite:///{self.workdir}/{self.name}-{self._n}.db"

    def count_events(self, url: str) -> int:
        """``count(*)`` of the events table, read with the standard library."""
        path = url.removeprefix("sqlite:///")
        if not os.path.exists(path):
            return 0
        with sqlite3.connect(path) as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone():
                return 0
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def count_closed(self, url: str) -> int:
        """Closed events, counted through the store's per-state index."""
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            row = conn.execute(f"SELECT count(*) FROM events WHERE state IN {CLOSED}").fetchone()
            return int(row[0])

    def drop(self, url: str) -> None:
        """Delete the file and its WAL and shared-memory files."""
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


@dataclass
class PostgresBackend:
    """A scratch database per service start, made next to the one ``dsn`` names.

    When the role may not create databases, the DSN's own database is used as it is and
    the bench counts the events it added.
    """

    dsn: str
    name: str = "postgres"
    _made: set[str] = field(default_factory=set)

    def fresh_url(self) -> str:
        """A new ``stagesync_bench_*`` database, or the DSN's own if that is refused."""
        db = f"stagesync_bench_{secrets.token_hex(4)}"
        try:
            asyncio.run(self._execute(self.dsn, f'CREATE DATABASE "{db}"'))
        except Exception:
            return self.dsn
        url = with_database(self.dsn, db)
        self._made.add(url)
        return url

    def count_events(self, url: str) -> int:
        """``count(*)`` of the events table, or 0 before it exists."""

        async def count() -> int:
            import asyncpg

            conn = await asyncpg.connect(url)
            try:
                if not await conn.fetchval("SELECT to_regclass('events') IS NOT NULL"):
                    return 0
                return int(await conn.fetchval("SELECT count(*) FROM events"))
            finally:
                await conn.close()

        return asyncio.run(count())

    def count_closed(self, url: str) -> int:
        """Closed events, counted through the store's per-state index."""

        async def count() -> int:
            import asyncpg

            conn = await asyncpg.connect(url)
            try:
                sql = f"SELECT count(*) FROM events WHERE state IN {CLOSED}"
                return int(await conn.fetchval(sql))
            finally:
                await conn.close()

        return asyncio.run(count())

    def drop(self, url: str) -> None:
        """Drop a scratch database; the DSN's own database is left alone."""
        if url in self._made:
            db = urlsplit(url).path.lstrip("/")
            asyncio.run(self._execute(self.dsn, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            self._made.discard(url)

    @staticmethod
    async def _execute(dsn: str, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


def with_database(dsn: str, db: str) -> str:
    """``dsn`` naming database ``db`` instead; keeps an empty host (a Unix socket DSN)."""
    parts = urlsplit(dsn)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}/{db}{query}"


def postgres_store_exists() -> bool:
    """Whether this checkout has the PostgreSQL store yet."""
    return importlib.util.find_spec("receiver.store.postgres.store") is not None


def select_backends(
    workdir: Path, names: list[str], postgres_dsn: str | None
) -> tuple[list[Backend], list[str]]:
    """The backends to run, and a note for each one asked for that cannot run."""
    backends: list[Backend] = []
    notes: list[str] = []
    if "sqlite" in names:
        backends.append(SQLiteBackend(workdir))
    if "postgres" in names:
        dsn = postgres_dsn or os.environ.get(POSTGRES_ENV)
        if not dsn:
            notes.append(f"postgres skipped: give --postgres DSN or set {POSTGRES_ENV}")
        elif not postgres_store_exists():
            notes.append("postgres skipped: the receiver.store.postgres package is missing")
        else:
            backends.append(PostgresBackend(dsn))
    return backends, notes


def backends_for(args: argparse.Namespace) -> list[Backend]:
    """:func:`select_backends` for a scenario's options; what is skipped goes to stderr."""
    backends, notes = select_backends(args.workdir, args.backends, args.postgres)
    for note in notes:
        print(f"bench: {note}", file=sys.stderr)
    return backends
