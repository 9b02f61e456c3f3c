"""The admin page's sessions on PostgreSQL: one row per login, deleted by its logout."""

from __future__ import annotations

from typing import Any


async def start(pool: Any, session_id: str, expires_at: float, now: float) -> None:
    """Remember ``session_id`` until ``expires_at``; forget the sessions already expired."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM admin_sessions WHERE expires_at <= $1", now)
        await conn.execute(
            "INSERT INTO admin_sessions (id, expires_at) VALUES ($1, $2)", session_id, expires_at
        )


async def is_open(pool: Any, session_id: str, now: float) -> bool:
    """Whether ``session_id`` was started, has not ended and has not expired."""
    found = await pool.fetchval(
        "SELECT 1 FROM admin_sessions WHERE id = $1 AND expires_at > $2", session_id, now
    )
    return found is not None


async def end(pool: Any, session_id: str) -> None:
    """Forget ``session_id``."""
    await pool.execute("DELETE FROM admin_sessions WHERE id = $1", session_id)
