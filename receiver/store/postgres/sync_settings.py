"""The PostgreSQL store's sync settings: the saved copy, its version, its history.

A save is a compare-and-set on the version (``UPDATE ... WHERE version = $n``), in one
transaction with its history entry, so two instances saving at once never both win. The
version is what every instance polls.
"""

from __future__ import annotations

from typing import Any

import orjson

from receiver.models import SavedSyncSettings, SyncSettingsChange, SyncValues
from receiver.store.rows import saved_sync_settings, sync_settings_change, sync_values_json

_ROW = "SELECT version, saved::text, updated_at, updated_by FROM sync_settings WHERE id = 1"


async def load(pool: Any) -> SavedSyncSettings | None:
    """The saved copy, or None while nothing was saved."""
    row = await pool.fetchrow(_ROW)
    return saved_sync_settings(*row) if row is not None else None


async def version(pool: Any) -> int:
    """The current version (0: nothing saved)."""
    value = await pool.fetchval("SELECT version FROM sync_settings WHERE id = 1")
    return int(value) if value is not None else 0


async def save(
    pool: Any,
    values: SyncValues | None,
    expected_version: int,
    at: float,
    by: str,
    changes: dict[str, Any],
) -> SavedSyncSettings | None:
    """Save ``values`` (None: back to the configured ones) if the version is still
    ``expected_version``; the new row, or None on a conflict."""
    saved = sync_values_json(values)
    async with pool.acquire() as conn, conn.transaction():
        new_version = await conn.fetchval(
            "UPDATE sync_settings SET version = version + 1, saved = $1::text::jsonb,"
            " updated_at = $2, updated_by = $3 WHERE id = 1 AND version = $4 RETURNING version",
            saved.decode() if saved is not None else None,
            at,
            by,
            expected_version,
        )
        if new_version is None:
            return None
        await conn.execute(
            "INSERT INTO sync_settings_history (version, at, by, changes)"
            " VALUES ($1, $2, $3, $4::text::jsonb)",
            new_version,
            at,
            by,
            orjson.dumps(changes).decode(),
        )
    return SavedSyncSettings(int(new_version), values, at, by)


async def history(pool: Any, limit: int, before: int | None) -> list[SyncSettingsChange]:
    """Changes older than version ``before`` (every one when None), newest first."""
    rows = await pool.fetch(
        "SELECT version, at, by, changes::text FROM sync_settings_history"
        " WHERE $2::bigint IS NULL OR version < $2::bigint ORDER BY version DESC LIMIT $1",
        limit,
        before,
    )
    return [sync_settings_change(*row) for row in rows]
