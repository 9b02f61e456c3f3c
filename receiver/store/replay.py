"""The chunked loops of replay and purge, shared by every store.

An operator's replay or purge may cover millions of events, so each store does it a
chunk at a time, each chunk its own short transaction: the dispatcher and the webhooks
keep going meanwhile. The store supplies the chunk; the loop, the running total and the
progress calls are the same for all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


async def replay_in_chunks(
    replay_chunk: Callable[[int | None], Awaitable[tuple[int, int | None]]],
    on_chunk: Callable[[], None],
    progress: Callable[[int], None] | None,
) -> int:
    """Call ``replay_chunk(below_id)`` until it finds nothing; the count replayed.

    ``replay_chunk`` replays the next chunk, newest first, below ``below_id`` (None: from
    the newest) and returns how many it replayed and the lowest id it looked at, None once
    nothing matched. After each chunk, ``on_chunk()`` (wake the dispatcher) and
    ``progress(total so far)``.
    """
    total = 0
    below_id: int | None = None
    while True:
        count, below_id = await replay_chunk(below_id)
        if below_id is None:
            return total
        total += count
        on_chunk()
        if progress is not None:
            progress(total)


async def purge_in_chunks(purge_chunk: Callable[[], Awaitable[int | None]]) -> int:
    """Call ``purge_chunk()`` until it finds nothing (None); the count deleted."""
    total = 0
    while (count := await purge_chunk()) is not None:
        total += count
    return total
