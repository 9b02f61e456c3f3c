"""The dry-run target's records on PostgreSQL.

Fields are JSONB and merged in the upsert itself (``fields || excluded.fields``), so two
instances upserting one record at once both land, whichever commits last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from receiver.models import TargetRecord

UPSERT = """
INSERT INTO records (hubspot_id, kind, target_id, fields, upserted_at)
SELECT u.hubspot_id, u.kind, 'dry-' || u.kind || '-' || u.hubspot_id, u.fields::jsonb, $4
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(hubspot_id, kind, fields)
ORDER BY u.hubspot_id, u.kind
ON CONFLICT (hubspot_id, kind) DO UPDATE SET
    fields = records.fields || excluded.fields, upserted_at = excluded.upserted_at
RETURNING hubspot_id, kind, target_id, (xmax = 0) AS created
"""


async def upsert(
    pool: Any, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
) -> list[tuple[str, bool]]:
    """Merge ``(kind, hubspot_id, fields)`` items in one statement; ids and created flags.

    One statement cannot upsert a row twice, so repeated items are merged first, and
    only the first of them can report ``created``, as if they were applied in turn.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, hubspot_id, fields in items:
        merged.setdefault((hubspot_id, kind), {}).update(fields)
    if not merged:
        return []
    keys = list(merged)
    rows = await pool.fetch(
        UPSERT,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [orjson.dumps(merged[k]).decode() for k in keys],
        now,
    )
    result = {(r[0], r[1]): (str(r[2]), bool(r[3])) for r in rows}
    out = []
    seen: set[tuple[str, str]] = set()
    for kind, hubspot_id, _ in items:
        key = (hubspot_id, kind)
        target_id, created = result[key]
        out.append((target_id, created and key not in seen))
        seen.add(key)
    return out


async def delete(pool: Any, hubspot_id: str) -> int:
    """Delete the Lead and the Contact of a HubSpot id; how many there were."""
    status = str(await pool.execute("DELETE FROM records WHERE hubspot_id = $1", hubspot_id))
    tail = status.rsplit(" ", 1)[-1]  # "DELETE 2"
    return int(tail) if tail.isdigit() else 0


async def listing(pool: Any, kind: str | None) -> list[TargetRecord]:
    """Records, newest upsert first, of one kind or all."""
    sql = "SELECT hubspot_id, kind, target_id, fields::text, upserted_at FROM records"
    args: tuple[Any, ...] = ()
    if kind:
        sql += " WHERE kind = $1"
        args = (kind,)
    rows = await pool.fetch(sql + " ORDER BY upserted_at DESC", *args)
    return [TargetRecord(r[0], r[1], r[2], orjson.loads(r[3]), float(r[4])) for r in rows]
