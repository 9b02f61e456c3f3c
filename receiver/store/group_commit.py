"""Group commit: concurrent ingests share one statement and one durable commit.

Webhook requests queue their events and wait. A writer takes everything queued, commits
it in one go, then answers every request of that group; requests that arrive meanwhile
form the next group, so the flush cost is shared under load while a lone request is
never held back. With several writers, one group is sent while another is flushed. A
group the database refuses is retried request by request, so one bad request cannot fail
the others with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from receiver.models import NewEvent
from receiver.ops.tasks import cancel_and_wait
from receiver.store.base import IngestResult
from receiver.store.health import CommitHealth


@dataclass
class IngestRequest:
    """One webhook request's events, waiting for their commit."""

    events: Sequence[NewEvent]
    now: float
    future: asyncio.Future[IngestResult] = field(repr=False)


CommitGroup = Callable[[list[IngestRequest]], Awaitable[list[IngestResult]]]


class GroupCommitter:
    """Runs ``writers`` tasks that pass queued requests to ``commit`` in groups.

    ``commit`` returns one result per request, in order, after the data is durable;
    ``on_commit`` is called after each successful group.
    """

    def __init__(
        self,
        commit: CommitGroup,
        on_commit: Callable[[], None],
        writers: int = 1,
        max_events: int = 20_000,
        storage_failure: Callable[[BaseException], bool] = lambda exc: True,
    ) -> None:
        self._commit = commit
        self._on_commit = on_commit
        self._storage_failure = storage_failure
        self.health = CommitHealth()
        self._writers = writers
        self._max_events = max_events
        self._queue: asyncio.Queue[IngestRequest] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the writer tasks."""
        self._tasks = [
            asyncio.create_task(self._write_loop(), name=f"group-commit-{n}")
            for n in range(self._writers)
        ]

    async def stop(self) -> None:
        """Answer every queued request, then stop the writers."""
        if not self._tasks:
            return
        await self._queue.join()
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def submit(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        """Queue ``events`` and wait until their group is committed."""
        if not self._tasks:
            raise RuntimeError("store is not open")
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(IngestRequest(events, now, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            size = len(group[0].events)
            while not self._queue.empty() and size < self._max_events:
                group.append(self._queue.get_nowait())
                size += len(group[-1].events)
            try:
                await self._commit_and_answer(group)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _commit_and_answer(self, group: list[IngestRequest]) -> None:
        try:
            results = await self._commit(group)
        except Exception as exc:
            if len(group) > 1:
                # One request's data must not fail the others: commit each on its own.
                for request in group:
                    await self._commit_and_answer([request])
                return
            if self._storage_failure(exc):
                self.health.failed(f"{type(exc).__name__}: {exc}")
            if not group[0].future.done():
                group[0].future.set_exception(exc)  # answered 503; HubSpot retries
            return
        self.health.succeeded()
        for request, result in zip(group, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)
        self._on_commit()
