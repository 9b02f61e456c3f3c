"""Retention of closed events (filled in by the operations work)."""

from __future__ import annotations

import asyncio
from typing import Any


def start_retention(ctx: Any) -> list[asyncio.Task[None]]:
    """Start the retention task; returns the tasks to cancel on shutdown."""
    return []
