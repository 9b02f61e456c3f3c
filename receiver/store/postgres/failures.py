"""The PostgreSQL store's failure groups: failed events by error code, largest first."""

from __future__ import annotations

from typing import Any

from receiver.models import FailureGroup

_GROUPS = """
    SELECT g.code, g.n, g.first_at, g.last_at,
           (SELECT last_error_message FROM events WHERE id = g.newest) AS message,
           (SELECT array_agg(id) FROM (
                SELECT id FROM events
                WHERE state = 'failed' AND coalesce(last_error_code, '') = g.code
                ORDER BY id DESC LIMIT $1) AS s) AS sample_ids
    FROM (
        SELECT coalesce(last_error_code, '') AS code, count(*) AS n,
               min(updated_at) AS first_at, max(updated_at) AS last_at, max(id) AS newest
        FROM events WHERE state = 'failed'
        GROUP BY 1 ORDER BY n DESC, code LIMIT $2
    ) AS g
    ORDER BY g.n DESC, g.code
"""


async def failure_groups(pool: Any, samples: int, limit: int) -> list[FailureGroup]:
    """Up to ``limit`` groups, each with the message of its newest event and the ids of
    its ``samples`` newest events."""
    rows = await pool.fetch(_GROUPS, samples, limit)
    return [
        FailureGroup(
            r["code"],
            r["message"],
            int(r["n"]),
            float(r["first_at"]),
            float(r["last_at"]),
            tuple(int(i) for i in sorted(r["sample_ids"] or (), reverse=True)),
        )
        for r in rows
    ]
