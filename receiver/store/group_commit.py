"""Group commit: concurrent ingests share one statement and one durable commit.

Webhook requests queue their events and wait. A writer takes everything queued, commits
it in one go, then answers every request of that group; requests that arrive meanwhile
form the next group, so the flush cost is shared under load while a lone request is
never held back. A group the database refuses is committed again request by request, so
one bad request cannot fail the others with it.

The rules are written once, here, for both stores: how a group is taken from the queue
(:func:`fill_group`), which of its events are sent and how each request's counts follow
from what was inserted (:func:`first_copies`, :class:`GroupTally`), how the answers
reach the requests and what they say of the database's health (:func:`answer`,
:func:`record_health`). Each store supplies only its commit of one group.

What runs the loop differs on purpose. :class:`GroupCommitter` runs it in event-loop
tasks, for PostgreSQL: its commit is a network round trip that asyncpg awaits, and two
writers overlap, so one group is sent while another is flushed. SQLite's commit is a
blocking call, so :class:`~receiver.store.sqlite.ingest.SQLiteIngest` runs the loop in a
thread of its own, which takes the next group as soon as a commit returns, without
waiting for the event loop (see its module); that is why the split of a failed group is
written twice, once awaited (:meth:`GroupCommitter._answers`) and once blocking
(:func:`commit_apart`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from receiver.models import NewEvent
from receiver.ops.tasks import cancel_and_wait
from receiver.store.base import IngestResult
from receiver.store.health import CommitHealth

# The most events one group commits; a request is never split.
MAX_GROUP_EVENTS = 20_000

Answer = IngestResult | BaseException


@dataclass
class IngestRequest:
    """One webhook request's events, waiting for their commit."""

    events: Sequence[NewEvent]
    now: float
    future: asyncio.Future[IngestResult] = field(repr=False)


def fill_group(
    group: list[IngestRequest],
    pop: Callable[[], IngestRequest],
    waiting: Callable[[], object],
    max_events: int,
) -> list[IngestRequest]:
    """Add queued requests to ``group``: ``pop()`` while ``waiting()``, up to ``max_events``."""
    size = sum(len(request.events) for request in group)
    while waiting() and size < max_events:
        group.append(pop())
        size += len(group[-1].events)
    return group


@dataclass
class GroupTally:
    """Per request of a group: the valid keys it was first to bring, its valid and invalid
    counts."""

    firsts: list[list[bytes]] = field(default_factory=list)
    valid: list[int] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)

    def results(self, inserted: set[bytes] | None) -> list[IngestResult]:
        """Each request's counts, given the keys the commit inserted (None: all it was sent).

        Duplicates inside the group are settled here (the first copy counts); a valid key
        the commit did not insert was stored already.
        """
        out = []
        for firsts, valid, invalid in zip(self.firsts, self.valid, self.invalid, strict=True):
            accepted = len(firsts) if inserted is None else sum(1 for k in firsts if k in inserted)
            out.append(IngestResult(accepted, valid - accepted, invalid))
        return out


def first_copies(
    requests: Sequence[tuple[Sequence[NewEvent], float]],
) -> tuple[list[list[NewEvent]], GroupTally]:
    """Per ``(events, now)`` request, its events whose dedup key is new to the group, in
    order; and the tally that turns the inserted keys into each request's result."""
    tally = GroupTally()
    news: list[list[NewEvent]] = []
    seen: set[bytes] = set()
    for events, _ in requests:
        fresh: list[NewEvent] = []
        firsts: list[bytes] = []
        valid = 0
        for ev in events:
            key = ev.dedup_key
            if key in seen:
                valid += ev.invalid_error is None
                continue
            seen.add(key)
            fresh.append(ev)
            if ev.invalid_error is None:
                valid += 1
                firsts.append(key)
        news.append(fresh)
        tally.firsts.append(firsts)
        tally.valid.append(valid)
        tally.invalid.append(len(events) - valid)
    return news, tally


def commit_apart(
    group: list[IngestRequest], commit: Callable[[list[IngestRequest]], list[IngestResult]]
) -> list[Answer]:
    """``commit(group)``; if it fails, each request committed on its own (blocking)."""
    try:
        return list(commit(group))
    except Exception as exc:
        if len(group) == 1:
            return [exc]  # answered 503; HubSpot retries
        # One request's data must not fail the others: commit each on its own.
        return [answer for request in group for answer in commit_apart([request], commit)]


def record_health(
    health: CommitHealth,
    answers: Sequence[Answer],
    storage_failure: Callable[[BaseException], bool],
    describe: Callable[[BaseException], str] = str,
) -> None:
    """What one group's answers say of the database.

    A committed request clears the failure; a group that failed for the database's own
    reasons (full, read-only, unreachable) records it, as ``describe(exc)``. One request's
    bad data, committed on its own after the group, is that request's problem and changes
    nothing.
    """
    if not all(isinstance(a, BaseException) for a in answers):
        health.succeeded()
        return
    failures = [a for a in answers if isinstance(a, BaseException) and storage_failure(a)]
    if failures:
        health.failed(describe(failures[0]))


def answer(group: Sequence[IngestRequest], answers: Sequence[Answer]) -> bool:
    """In the event loop: hand each request its result; whether any was committed."""
    for request, result in zip(group, answers, strict=True):
        if request.future.done():  # the request was cancelled meanwhile
            continue
        if isinstance(result, BaseException):
            request.future.set_exception(result)
        else:
            request.future.set_result(result)
    return not all(isinstance(a, BaseException) for a in answers)


def _named(exc: BaseException) -> str:
    # asyncpg's messages do not say what failed ("could not extend file"): the class does.
    return f"{type(exc).__name__}: {exc}"


CommitGroup = Callable[[list[IngestRequest]], Awaitable[list[IngestResult]]]


class GroupCommitter:
    """Runs ``writers`` tasks that pass queued requests to ``commit`` in groups.

    ``commit`` returns one result per request, in order, after the data is durable;
    ``on_commit`` is called after each group of which anything was committed.
    """

    def __init__(
        self,
        commit: CommitGroup,
        on_commit: Callable[[], None],
        writers: int = 1,
        max_events: int = MAX_GROUP_EVENTS,
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

    def _waiting(self) -> bool:
        return not self._queue.empty()

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            group = fill_group([first], self._queue.get_nowait, self._waiting, self._max_events)
            try:
                answers = await self._answers(group)
                record_health(self.health, answers, self._storage_failure, _named)
                if answer(group, answers):
                    self._on_commit()
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _answers(self, group: list[IngestRequest]) -> list[Answer]:
        # As commit_apart, awaited.
        try:
            return list(await self._commit(group))
        except Exception as exc:
            if len(group) == 1:
                return [exc]
            return [a for request in group for a in await self._answers([request])]
