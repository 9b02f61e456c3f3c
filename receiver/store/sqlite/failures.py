"""The SQLite store's failure groups: failed events by error code, largest first."""

from __future__ import annotations

import aiosqlite

from receiver.models import FailureGroup

_GROUPS = (
    "SELECT coalesce(last_error_code, '') AS code, count(*) AS n, min(updated_at),"
    " max(updated_at), max(id) FROM events"
    " WHERE state = 'failed' GROUP BY code ORDER BY n DESC, code LIMIT ?"
)


async def failure_groups(
    conn: aiosqlite.Connection, samples: int, limit: int
) -> list[FailureGroup]:
    """Up to ``limit`` groups, each with the message of its newest event and the ids of
    its ``samples`` newest events."""
    async with conn.execute(_GROUPS, (limit,)) as cur:
        rows = await cur.fetchall()
    groups = []
    for code, n, first_at, last_at, newest in rows:
        async with conn.execute(
            "SELECT id FROM events WHERE state = 'failed' AND coalesce(last_error_code, '') = ?"
            " ORDER BY id DESC LIMIT ?",
            (code, samples),
        ) as cur:
            ids = tuple(int(r[0]) for r in await cur.fetchall())
        async with conn.execute(
            "SELECT last_error_message FROM events WHERE id = ?", (newest,)
        ) as cur:
            row = await cur.fetchone()
        message = row[0] if row else None
        groups.append(FailureGroup(code, message, int(n), float(first_at), float(last_at), ids))
    return groups
