"""Stopping background tasks: cancel, then wait for each to finish.

The app's background loops and the stores' helper tasks stop this way. The dispatcher
stops its own tasks with a repeated cancel and a bounded wait instead, because a worker
may be inside a call that absorbs one cancellation and it must still release its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel ``tasks`` (``None`` entries are skipped) and wait until each has finished.

    A task that ended with an error of its own raises it here: a loop that died should
    not stop quietly.
    """
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError):
            await task
