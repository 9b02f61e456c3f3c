"""LISTEN/NOTIFY wake-ups across instances, on a dedicated connection that reconnects.

The event triggers send a notification when events become ``pending`` (see
:mod:`receiver.store.postgres.schema`), with the sending store's token as payload. This
listener calls ``on_wake`` for each one another store sent (our own commits have called
the listeners already), and once after every reconnect, since notifications sent while
disconnected are lost. Polling in
the dispatcher remains the fallback while the connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from receiver.ops.logging import get_logger
from receiver.ops.tasks import cancel_and_wait

log = get_logger("receiver.store.postgres.store")

KEEPALIVE_S = 5.0
RETRY_MIN_S = 0.2
RETRY_MAX_S = 5.0


class NotifyListener:
    """Listens on ``channel``; ignores payloads equal to ``token`` (our own commits)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        token: str,
        on_wake: Callable[[], None],
    ) -> None:
        self._connect = connect
        self.channel = channel
        self.token = token
        self._on_wake = on_wake
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None

    def start(self) -> None:
        """Start listening in a background task."""
        self._task = asyncio.create_task(self._run(), name="postgres-listen")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        await cancel_and_wait([self._task])
        self._task = None

    def _message(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self.token:
            self._on_wake()

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        first = True
        while True:
            try:
                await self._listen_once(first)
                delay = RETRY_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notify_listener_down", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            first = False

    async def _listen_once(self, first: bool) -> None:
        conn: asyncpg.Connection = await self._connect()
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(self.channel, self._message)
            self.backend_pid = conn.get_server_pid()
            self.connected.set()
            if not first:
                log.info("notify_listener_reconnected")
                self._on_wake()
            while not lost.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(KEEPALIVE_S):
                        await lost.wait()
                if not lost.is_set():
                    # A half-open TCP connection raises nothing until we use it.
                    async with asyncio.timeout(KEEPALIVE_S):
                        await conn.fetchval("SELECT 1")
            raise ConnectionError("the LISTEN connection was closed by the server")
        finally:
            self.connected.clear()
            await _close(conn)


async def _close(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except Exception:
        conn.terminate()
    except BaseException:
        conn.terminate()
        raise
