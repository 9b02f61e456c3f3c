"""The admin page's sessions on SQLite: one row per login, deleted by its logout."""

from __future__ import annotations

import sqlite3


def start(conn: sqlite3.Connection, session_id: str, expires_at: float, now: float) -> None:
    """Remember ``session_id`` until ``expires_at``; forget the sessions already expired."""
    conn.execute("DELETE FROM admin_sessions WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT INTO admin_sessions (id, expires_at) VALUES (?, ?)", (session_id, expires_at)
    )


def end(conn: sqlite3.Connection, session_id: str) -> None:
    """Forget ``session_id``."""
    conn.execute("DELETE FROM admin_sessions WHERE id = ?", (session_id,))


OPEN_SQL = "SELECT 1 FROM admin_sessions WHERE id = ? AND expires_at > ?"
