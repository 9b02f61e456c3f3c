"""Admin API (filled in by the operations work)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def admin_routes() -> list[BaseRoute]:
    """Routes under ``/admin``."""
    return []
