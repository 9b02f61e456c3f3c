"""The SQLite store's sync settings: the saved copy, its version, its history.

A save is a compare-and-set on the version, run whole in the writer thread with its
history entry, and flushed before it returns. The version is what every instance polls.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite
import orjson

from receiver.models import SavedSyncSettings, SyncSettingsChange, SyncValues
from receiver.store.rows import saved_sync_settings, sync_settings_change, sync_values_json

_ROW = "SELECT version, saved, updated_at, updated_by FROM sync_settings WHERE id = 1"


async def load(conn: aiosqlite.Connection) -> SavedSyncSettings | None:
    """The saved copy, or None while nothing was saved."""
    async with conn.execute(_ROW) as cur:
        row = await cur.fetchone()
    return saved_sync_settings(*row) if row else None


async def version(conn: aiosqlite.Connection) -> int:
    """The current version (0: nothing saved)."""
    async with conn.execute("SELECT version FROM sync_settings WHERE id = 1") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def save(
    conn: sqlite3.Connection,
    values: SyncValues | None,
    expected_version: int,
    at: float,
    by: str,
    changes: dict[str, Any],
) -> SavedSyncSettings | None:
    """Save ``values`` (None: back to the configured ones) if the version is still
    ``expected_version``; the new row, or None on a conflict."""
    cur = conn.execute(
        "UPDATE sync_settings SET version = version + 1, saved = ?, updated_at = ?,"
        " updated_by = ? WHERE id = 1 AND version = ?",
        (sync_values_json(values), at, by, expected_version),
    )
    if cur.rowcount != 1:
        return None
    new_version = expected_version + 1
    conn.execute(
        "INSERT INTO sync_settings_history (version, at, by, changes) VALUES (?, ?, ?, ?)",
        (new_version, at, by, orjson.dumps(changes).decode()),
    )
    return SavedSyncSettings(new_version, values, at, by)


async def history(
    conn: aiosqlite.Connection, limit: int, before: int | None
) -> list[SyncSettingsChange]:
    """Changes older than version ``before`` (every one when None), newest first."""
    async with conn.execute(
        "SELECT version, at, by, changes FROM sync_settings_history"
        " WHERE ?1 IS NULL OR version < ?1 ORDER BY version DESC LIMIT ?2",
        (before, limit),
    ) as cur:
        return [sync_settings_change(*row) for row in await cur.fetchall()]
