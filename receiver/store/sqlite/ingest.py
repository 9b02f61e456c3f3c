"""The SQLite store's ingest path: group commit with one statement per group.

Webhook requests queue their events and wait. The ingest thread, with a connection of
its own, takes everything queued as one group and commits it as **one**
``INSERT ... SELECT FROM json_each(?)`` statement in autocommit mode: SQLite parses the
rows, inserts them and commits (one fsync, ``synchronous=FULL``) inside a single call
that does not hold the GIL, and the rows are never bound one by one from Python. Then
the thread hands the group's answers to the event loop in one callback and takes the
next group at once. Requests that arrive during a commit form the next group, so the
flush is shared under load while a lone request is never held back.

Why a thread that loops rather than a hop from the event loop per group: the commits
then follow one another without waiting for the event loop, which under load has a
queue of requests to parse before it would see that a commit finished; only the answers
wait for it. A group that SQLite refuses is committed again request by request, so one
bad request cannot fail the others.

The rows travel as one JSON array; the 24-byte duplicate keys and the raw events travel
as two concatenated blobs, cut out with ``substr`` so they are stored byte for byte.
Each request's ``now`` is sent as the integer ratio of the float, so ``received_at`` is
exactly the value given. Groups that JSON cannot carry exactly (a NUL character in a
text, an odd key length or clock value) take a slower path with bound parameters.

Every write of the store, this one included, holds the store's
:class:`~receiver.store.sqlite.write_lock.WriteLock`, so this connection never waits on SQLite's
file lock for the other one; ingest takes it ahead of the dispatcher's writes.

Per-request counts: duplicates inside the group are settled in Python (the first copy
counts, see :mod:`receiver.store.group_commit`, which also holds the grouping, the split
of a failed group and the answers, shared with PostgreSQL); the statement's row count
tells whether every remaining row was new. Only when some row already existed are the
inserted keys read back, by their contiguous ids.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from receiver.models import NewEvent
from receiver.store.base import IngestResult
from receiver.store.group_commit import (
    MAX_GROUP_EVENTS,
    Answer,
    GroupTally,
    IngestRequest,
    answer,
    commit_apart,
    fill_group,
    first_copies,
    record_health,
)
from receiver.store.health import CommitHealth, storage_failure
from receiver.store.sqlite.write_lock import WriteLock

KEY_LENGTH = 24
# The largest numerator and denominator of a clock value that SQLite turns back into the
# very same double: an integer of at most 53 bits, divided by a power of two.
_MAX_NUMERATOR = 1 << 53
_MAX_DENOMINATOR = 1 << 62

# ON CONFLICT(dedup_key), not OR IGNORE: OR IGNORE would also skip a row breaking a NOT
# NULL constraint, and the event would be acknowledged as a duplicate without being stored.
# listed = 0: the claim puts them in the index by contact (see sqlite_schema).
INSERT_ROW = (
    "INSERT INTO events (dedup_key, state, object_id, subscription_type, occurred_at, stage,"
    " received_at, updated_at, raw, last_error_code, last_error_message, listed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT(dedup_key) DO NOTHING"
)
# Row layout in the JSON array: state, object_id, subscription_type, occurred_at, stage,
# raw offset (1-based), raw length, error code, error message, now numerator, denominator.
_AT = "CAST(value ->> 9 AS REAL) / (value ->> 10)"
# WHERE true: after a SELECT, SQLite would read ON as the start of a join constraint.
INSERT_GROUP = (
    "INSERT INTO events (dedup_key, state, object_id, subscription_type, occurred_at, stage,"
    " received_at, updated_at, raw, last_error_code, last_error_message, listed)"
    f" SELECT substr(?2, key * {KEY_LENGTH} + 1, {KEY_LENGTH}), value ->> 0, value ->> 1,"
    f" value ->> 2, value ->> 3, value ->> 4, {_AT}, {_AT}, substr(?3, value ->> 5, value ->> 6),"
    " value ->> 7, value ->> 8, 0 FROM json_each(?1) WHERE true ON CONFLICT(dedup_key) DO NOTHING"
)
INSERTED_KEYS = "SELECT dedup_key FROM events WHERE id BETWEEN ? AND ?"


@dataclass
class GroupRows:
    """One group's new rows, and the tally that turns them into each request's result."""

    tally: GroupTally
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    nows: list[float] = field(default_factory=list)  # per row, for the exact path
    exact_json: bool = True


def group_rows(group: Sequence[tuple[Sequence[NewEvent], float]]) -> GroupRows:
    """The rows to insert for ``(events, now)`` requests, in order, first copies only."""
    news, tally = first_copies(group)
    out = GroupRows(tally)
    offset = 1
    for (_, now), events in zip(group, news, strict=True):
        num, den = now.as_integer_ratio()
        if not (-_MAX_NUMERATOR <= num <= _MAX_NUMERATOR and den <= _MAX_DENOMINATOR):
            out.exact_json = False
        for ev in events:
            key = ev.dedup_key
            raw = ev.raw
            size = len(raw)
            if ev.invalid_error is None:
                out.rows.append(
                    ("pending", ev.object_id, ev.subscription_type, ev.occurred_at, ev.stage,
                     offset, size, None, None, num, den)
                )  # fmt: skip
            else:
                out.rows.append(
                    ("invalid", None, None, None, None, offset, size, "invalid_event",
                     ev.invalid_error, num, den)
                )  # fmt: skip
            if len(key) != KEY_LENGTH:
                out.exact_json = False
            out.keys.append(key)
            out.raws.append(raw)
            out.nows.append(now)
            offset += size
    return out


def insert_group(conn: sqlite3.Connection, batch: GroupRows) -> set[bytes] | None:
    """Insert and commit ``batch`` (in the ingest thread); the inserted keys, None for all."""
    if not batch.rows:
        return set()
    doc = orjson.dumps(batch.rows) if batch.exact_json else b""
    # SQLite's JSON functions end a text at an escaped NUL: such groups take the slow path.
    if doc and b"\\u0000" not in doc:
        cur = conn.execute(INSERT_GROUP, (doc, b"".join(batch.keys), b"".join(batch.raws)))
        count, last = cur.rowcount, cur.lastrowid
        cur.close()
        if count == len(batch.rows):
            return None
        if not count or last is None:
            return set()
        # Rows of one statement get consecutive ids (max(id) + 1 each, nobody else inserts).
        found = conn.execute(INSERTED_KEYS, (last - count + 1, last)).fetchall()
        return {bytes(row[0]) for row in found}
    return _insert_rows(conn, batch)


def _insert_rows(conn: sqlite3.Connection, batch: GroupRows) -> set[bytes]:
    """The exact path: one bound statement per row, in one transaction."""
    inserted: set[bytes] = set()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for row, key, raw, now in zip(batch.rows, batch.keys, batch.raws, batch.nows, strict=True):
            state, object_id, sub_type, occurred_at, stage, _, _, code, message, _, _ = row
            values = (key, state, object_id, sub_type, occurred_at, stage, now, now, raw, code,
                      message)  # fmt: skip
            if conn.execute(INSERT_ROW, values).rowcount:
                inserted.add(key)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return inserted


class SQLiteIngest:
    """Group commit in a thread and on a connection of its own; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        lock: WriteLock,
        on_commit: Callable[[], None],
        max_events: int = MAX_GROUP_EVENTS,
    ) -> None:
        self._connect = connect
        self._lock = lock
        self._on_commit = on_commit
        self._max_events = max_events
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[IngestRequest] = deque()
        self._idle = False
        self._closing = False
        self._stopped: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.health = CommitHealth()

    async def open(self) -> None:
        """Start the ingest thread, once it has connected."""
        loop = self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        stopped: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._run, args=(opened, stopped), name="sqlite-ingest", daemon=True
        )
        thread.start()
        await opened
        self._stopped = stopped

    async def close(self) -> None:
        """Answer every queued request, then stop the thread and close its connection."""
        with self._cond:
            # No request may join the queue from now on: it would never be answered.
            self._closing = True
            self._cond.notify()
        if self._stopped is not None:
            await self._stopped  # the answers the thread sends arrive before it
            self._stopped = None

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Queue ``events`` and return once their group is committed."""
        assert self._loop is not None, "store is not open"
        future: asyncio.Future[IngestResult] = self._loop.create_future()
        with self._cond:
            if self._closing:
                raise RuntimeError("store is closing")
            self._queue.append(IngestRequest(events, now, future))
            if self._idle:
                self._cond.notify()
        return await future

    # -- the ingest thread -----------------------------------------------------------

    def _run(self, opened: asyncio.Future[None], stopped: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, opened, exc)
            return
        loop.call_soon_threadsafe(_settle, opened, None)
        try:
            while group := self._next_group():
                answers = commit_apart(group, partial(self._commit, conn))
                record_health(self.health, answers, storage_failure)
                loop.call_soon_threadsafe(self._answer, group, answers)
        finally:
            conn.close()
            loop.call_soon_threadsafe(_settle, stopped, None)

    def _next_group(self) -> list[IngestRequest]:
        """Everything queued, up to ``max_events``; waits for some; empty once closed."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return []
                self._idle = True
                self._cond.wait()
                self._idle = False
            queue = self._queue
            return fill_group([queue.popleft()], queue.popleft, queue.__len__, self._max_events)

    def _commit(self, conn: sqlite3.Connection, group: list[IngestRequest]) -> list[IngestResult]:
        batch = group_rows([(request.events, request.now) for request in group])
        with self._lock.urgent():
            inserted = insert_group(conn, batch)
        return batch.tally.results(inserted)

    def _answer(self, group: list[IngestRequest], answers: list[Answer]) -> None:
        """In the event loop: hand each request its result."""
        if answer(group, answers):
            self._on_commit()


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
