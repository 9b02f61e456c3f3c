"""The SQLite store's ingest path: group commit with one statement per group.

Webhook requests queue their events (see :class:`~receiver.store.group_commit.GroupCommitter`).
The writer takes everything queued and hands it to a thread of its own, with a
connection of its own, as **one** ``INSERT ... SELECT FROM json_each(?)`` statement in
autocommit mode: SQLite parses the rows, inserts them and commits (one fsync,
``synchronous=FULL``) inside a single call that does not hold the GIL. So the group
costs one thread hop, whatever its size, and the rows are never bound one by one from
Python; the event loop keeps parsing the next requests meanwhile.

The rows travel as one JSON array; the 24-byte duplicate keys and the raw events travel
as two concatenated blobs, cut out with ``substr`` so they are stored byte for byte.
Each request's ``now`` is sent as the integer ratio of the float, so ``received_at`` is
exactly the value given. Groups that JSON cannot carry exactly (a NUL character in a
text, an odd key length or clock value) take a slower path with bound parameters.

Every write of the store, this one included, holds the store's
:class:`~receiver.store.write_lock.WriteLock`, so this connection never waits on SQLite's
file lock for the other one; ingest takes it ahead of the dispatcher's writes.

Per-request counts: duplicates inside the group are settled in Python (the first copy
counts); the statement's row count tells whether every remaining row was new. Only when
some row already existed are the inserted keys read back, by their contiguous ids.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from receiver.models import NewEvent
from receiver.store.base import IngestResult
from receiver.store.group_commit import GroupCommitter, IngestRequest
from receiver.store.sqlite_thread import run_to_end
from receiver.store.write_lock import WriteLock

KEY_LENGTH = 24
# The largest numerator and denominator of a clock value that SQLite turns back into the
# very same double: an integer of at most 53 bits, divided by a power of two.
_MAX_NUMERATOR = 1 << 53
_MAX_DENOMINATOR = 1 << 62

# ON CONFLICT(dedup_key), not OR IGNORE: OR IGNORE would also skip a row breaking a NOT
# NULL constraint, and the event would be acknowledged as a duplicate without being stored.
INSERT_ROW = (
    "INSERT INTO events (dedup_key, state, object_id, subscription_type,"
    " occurred_at, stage, received_at, updated_at, raw, last_error_code, last_error_message)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(dedup_key) DO NOTHING"
)
# Row layout in the JSON array: state, object_id, subscription_type, occurred_at, stage,
# raw offset (1-based), raw length, error code, error message, now numerator, denominator.
_AT = "CAST(value ->> 9 AS REAL) / (value ->> 10)"
# WHERE true: after a SELECT, SQLite would read ON as the start of a join constraint.
INSERT_GROUP = (
    "INSERT INTO events (dedup_key, state, object_id, subscription_type,"
    " occurred_at, stage, received_at, updated_at, raw, last_error_code, last_error_message)"
    f" SELECT substr(?2, key * {KEY_LENGTH} + 1, {KEY_LENGTH}), value ->> 0, value ->> 1,"
    f" value ->> 2, value ->> 3, value ->> 4, {_AT}, {_AT}, substr(?3, value ->> 5, value ->> 6),"
    " value ->> 7, value ->> 8 FROM json_each(?1) WHERE true ON CONFLICT(dedup_key) DO NOTHING"
)
INSERTED_KEYS = "SELECT dedup_key FROM events WHERE id BETWEEN ? AND ?"


@dataclass
class GroupRows:
    """One group's new rows, and what each request needs to count its result."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    nows: list[float] = field(default_factory=list)  # per row, for the exact path
    firsts: list[list[bytes]] = field(default_factory=list)  # per request: its new valid keys
    valid: list[int] = field(default_factory=list)  # per request
    invalid: list[int] = field(default_factory=list)  # per request
    exact_json: bool = True


def group_rows(group: Sequence[tuple[Sequence[NewEvent], float]]) -> GroupRows:
    """The rows to insert for ``(events, now)`` requests, in order, first copies only."""
    out = GroupRows()
    seen: set[bytes] = set()
    offset = 1
    for events, now in group:
        num, den = now.as_integer_ratio()
        if not (-_MAX_NUMERATOR <= num <= _MAX_NUMERATOR and den <= _MAX_DENOMINATOR):
            out.exact_json = False
        firsts: list[bytes] = []
        valid = invalid = 0
        for ev in events:
            key = ev.dedup_key
            if ev.invalid_error is None:
                valid += 1
            else:
                invalid += 1
            if key in seen:
                continue
            seen.add(key)
            raw = ev.raw
            size = len(raw)
            if ev.invalid_error is None:
                firsts.append(key)
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
        out.firsts.append(firsts)
        out.valid.append(valid)
        out.invalid.append(invalid)
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


def results(batch: GroupRows, inserted: set[bytes] | None) -> list[IngestResult]:
    """Each request's accepted, duplicate and invalid counts."""
    out = []
    for firsts, valid, invalid in zip(batch.firsts, batch.valid, batch.invalid, strict=True):
        accepted = len(firsts) if inserted is None else sum(1 for k in firsts if k in inserted)
        out.append(IngestResult(accepted, valid - accepted, invalid))
    return out


class SQLiteIngest:
    """Group commit on a connection and a thread of its own; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        lock: WriteLock,
        on_commit: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._lock = lock
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-ingest")
        self._committer = GroupCommitter(self._commit, on_commit)
        self.commits = 0  # groups committed, each one transaction and one fsync
        self._closing = False

    async def open(self) -> None:
        """Connect (in the ingest thread) and start the writer."""
        self._conn = await self._run(self._connect)
        self._committer.start()

    async def close(self) -> None:
        """Answer every queued request, then close the connection and the thread."""
        # No request may join the queue once it is drained: it would never be answered.
        self._closing = True
        await self._committer.stop()
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=True)

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Queue ``events`` and return once their group is committed."""
        if self._closing:
            raise RuntimeError("store is closing")
        return await self._committer.submit(events, now)

    async def _commit(self, group: list[IngestRequest]) -> list[IngestResult]:
        conn = self._conn
        assert conn is not None, "store is not open"
        batch = group_rows([(request.events, request.now) for request in group])
        async with self._lock.urgent():
            inserted = await run_to_end(self._thread, insert_group, conn, batch)
        self.commits += 1
        return results(batch, inserted)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
