"""Store fixtures over every backend: SQLite in a temporary file, PostgreSQL in a fresh
schema, and the in-memory store of the unit tests (``tests/fakes/memory_store.py``), which
must behave as the real ones do.

The PostgreSQL parameter uses ``STAGESYNC_TEST_POSTGRES_DSN``, or when that is unset, a
throwaway cluster the session starts itself when the PostgreSQL server programs are
installed (:mod:`tests.support.postgres_cluster`); without either it is skipped, the
reason saying why. Each PostgreSQL test gets its own schema (selected with
``search_path`` in the DSN), dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import asyncpg
import pytest

from receiver.store.base import EventStore
from receiver.store.factory import make_store
from receiver.store.postgres.store import PostgresStore
from tests.fakes.memory_store import InMemoryStore
from tests.support.postgres_cluster import session_cluster

DSN_ENV = "STAGESYNC_TEST_POSTGRES_DSN"
SKIP_REASON = f"{DSN_ENV} is not set and no throwaway PostgreSQL cluster could be started"


def postgres_dsn() -> str:
    """The test database's DSN; skips the test when there is none."""
    dsn = os.environ.get(DSN_ENV) or session_cluster.dsn()
    if not dsn:
        pytest.skip(f"{SKIP_REASON}: {session_cluster.unavailable}")
    return dsn


def with_query(dsn: str, **params: str) -> str:
    """``dsn`` with query parameters added or replaced (asyncpg passes unknown ones, such as
    ``search_path``, to the server as settings)."""
    # Not urlunsplit: it would turn ``postgresql:///db`` (empty host) into ``postgresql:/db``.
    base, _, query = dsn.partition("?")
    merged = dict(parse_qsl(query))
    merged.update(params)
    return f"{base}?{urlencode(merged, safe='/')}"


@asynccontextmanager
async def fresh_schema(base_dsn: str) -> AsyncIterator[str]:
    """Create an empty schema, yield a DSN whose ``search_path`` selects it, then drop it."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    try:
        yield with_query(base_dsn, search_path=schema)
    finally:
        conn = await asyncpg.connect(base_dsn)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


@dataclass(frozen=True)
class Backend:
    """Where a test's store lives; :meth:`new` makes another store on the same data."""

    name: str
    url: str  # a STAGESYNC_DATABASE_URL

    def new(self) -> EventStore:
        """A new, not yet opened, store on this backend's database.

        For ``memory`` a new, empty store: it keeps nothing beyond the object.
        """
        if self.name == "memory":
            return InMemoryStore()
        return make_store(self.url)

    def skip_if_memory(self, why: str) -> None:
        """Skip the test on the in-memory store, saying ``why`` it cannot apply."""
        if self.name == "memory":
            pytest.skip(f"in-memory store: {why}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend in turn: the test id shows ``[sqlite]``, ``[postgres]`` or ``[memory]``."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'store.db'}")
        return
    if request.param == "memory":
        yield Backend("memory", "memory:")  # no database URL: a service on it fails loudly
        return
    async with fresh_schema(postgres_dsn()) as dsn:
        yield Backend("postgres", dsn)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each real database in turn, for tests that run the whole service on it."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'service.db'}")
        return
    async with fresh_schema(postgres_dsn()) as dsn:
        yield Backend("postgres", dsn)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[EventStore]:
    """An open store on a clean database, closed after the test."""
    opened = backend.new()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """A DSN on a fresh PostgreSQL schema, for PostgreSQL-only tests."""
    async with fresh_schema(postgres_dsn()) as dsn:
        yield dsn


@pytest.fixture
async def pg_pair(pg_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema, as two instances would be."""
    a, b = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
