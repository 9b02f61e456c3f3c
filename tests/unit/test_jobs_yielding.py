"""Backfill and reconciliation give way to webhooks: their commits go in slices that a
webhook's commit never waits behind all of, and their pages are spaced while webhooks
keep coming."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from receiver.hubspot.search import Filter, Hit, SearchCursor, SearchPage
from receiver.jobs.backfill import BackfillRunner
from receiver.jobs.events import search_event
from receiver.jobs.yielding import SLICE_EVENTS, WebhookLoad, give_way, ingest_in_slices
from receiver.models import NewEvent
from receiver.store.base import IngestResult
from receiver.store.group_commit import GroupCommitter, IngestRequest
from receiver.sync.rules import BACKFILL
from tests.fakes.memory_store import InMemoryStore


def hits(first: int, n: int) -> list[Hit]:
    return [
        Hit(i, {"lifecyclestage": "lead", "email": f"c{i}@example.com"}, "2024-01-01T00:00:00Z",
            1_704_067_200_000)
        for i in range(first, first + n)
    ]  # fmt: skip


class ScriptedSearch:
    """Answers ``pages`` pages of ``size`` hits and counts the calls."""

    def __init__(self, pages: int, size: int) -> None:
        self.pages = pages
        self.size = size
        self.calls = 0

    async def page(
        self, filters: Sequence[Filter], properties: Sequence[str], cursor: SearchCursor, now: float
    ) -> SearchPage:
        number = int(cursor.after or 0)
        self.calls += 1
        last = number + 1 >= self.pages
        following = None if last else SearchCursor(after=str(number + 1))
        return SearchPage(hits(number * self.size + 1, self.size), following, 1)


class CountingStore(InMemoryStore):
    """The in-memory store, noting the size of each ingest."""

    def __init__(self) -> None:
        super().__init__()
        self.ingests: list[int] = []

    async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
        self.ingests.append(len(events))
        return await super().ingest(events, now)


# -- the webhook load ------------------------------------------------------------------------


def test_webhooks_are_busy_while_enough_requests_came_within_the_window() -> None:
    now = [100.0]
    load = WebhookLoad(busy_requests=3, window_s=1.0, clock=lambda: now[0])
    for _ in range(2):
        load.note()
    assert not load.busy()  # a trickle
    load.note()
    assert load.busy()
    now[0] += 0.5
    load.note()
    assert load.busy()
    now[0] += 0.6  # three of the four are older than the window now
    assert not load.busy()


# -- commits in slices ----------------------------------------------------------------------


async def test_a_webhook_commit_is_not_queued_behind_a_whole_backfill_page() -> None:
    groups: list[list[IngestRequest]] = []
    gate = asyncio.Event()
    committing = asyncio.Event()

    async def commit(group: list[IngestRequest]) -> list[IngestResult]:
        groups.append(group)
        committing.set()
        await gate.wait()  # each commit lasts until the test lets it go
        gate.clear()
        return [IngestResult(len(r.events), 0, 0) for r in group]

    committer = GroupCommitter(commit, lambda: None, writers=1)
    committer.start()

    class Ingest:
        async def ingest(self, events: Sequence[NewEvent], now: float) -> IngestResult:
            return await committer.submit(events, now)

    page = [search_event(hit, BACKFILL, "backfill:1") for hit in hits(1, 4 * SLICE_EVENTS)]
    backfill = asyncio.create_task(ingest_in_slices(Ingest(), page, lambda: 0.0))  # type: ignore[arg-type]
    await committing.wait()  # the page's first slice is being committed
    webhook_events = [
        NewEvent(bytes([n]) * 24, b"{}", 50_000_000 + n, "contact.creation", 0, None)
        for n in range(10)
    ]
    webhook = asyncio.create_task(committer.submit(webhook_events, 0.0))
    while not webhook.done() or not backfill.done():
        gate.set()
        await asyncio.sleep(0)
    await committer.stop()
    assert backfill.result() == len(page)
    mine = next(n for n, g in enumerate(groups) if any(r.events is webhook_events for r in g))
    before = sum(len(r.events) for g in groups[:mine] for r in g)
    assert before == SLICE_EVENTS  # only the slice in flight when it came
    assert [len(r.events) for r in groups[mine]] == [10]
    assert len(groups) == 5  # four slices and the webhook's own commit


# -- pages spaced under load ------------------------------------------------------------------


async def backfill_taken(
    load: WebhookLoad,
) -> tuple[CountingStore, ScriptedSearch, BackfillRunner, Any]:
    """A runner over three pages of 120 contacts, and the backfill job it has taken."""
    store = CountingStore()
    search = ScriptedSearch(pages=3, size=120)
    runner = BackfillRunner(
        store=store,
        search=search,
        properties=["email"],
        load=load,
        busy_gap_s=3600,  # type: ignore[arg-type]
    )
    job = await store.create_backfill(["lead"], 0.0)
    assert job is not None
    taken = await store.take_backfill(runner.owner, runner.clock(), 60.0)
    assert taken is not None
    return store, search, runner, taken


async def test_a_backfill_commits_each_page_in_slices_at_full_speed_when_webhooks_are_quiet() -> (
    None
):
    load = WebhookLoad(busy_requests=10)
    load.note()  # one webhook: a trickle
    store, search, runner, taken = await backfill_taken(load)
    done = await asyncio.wait_for(runner.run(taken), 30)
    assert done is not None and (done.state, done.found, done.queued) == ("done", 360, 360)
    assert search.calls == 3
    assert store.ingests == [SLICE_EVENTS, SLICE_EVENTS, 120 - 2 * SLICE_EVENTS] * 3


async def test_a_backfill_waits_before_its_pages_while_webhooks_are_busy_and_a_stop_ends_the_wait(
) -> None:  # fmt: skip
    load = WebhookLoad(busy_requests=1, window_s=3600)
    load.note()  # webhooks keep coming
    _, search, runner, taken = await backfill_taken(load)
    running = asyncio.create_task(runner.run(taken))
    for _ in range(20):
        await asyncio.sleep(0)
    assert search.calls == 0 and not running.done()  # giving way, not searching
    await runner.stop()
    paused: Any = await asyncio.wait_for(running, 30)
    assert search.calls == 0
    assert paused.state == "running" and paused.owner is None  # released for a restart


async def test_giving_way_ends_as_soon_as_the_webhooks_go_quiet() -> None:
    now = [100.0]
    load = WebhookLoad(busy_requests=1, window_s=1.0, clock=lambda: now[0])
    load.note()
    waiting = asyncio.create_task(give_way(load, 3600, asyncio.Event()))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    now[0] += 2.0  # no webhook for longer than the window
    await asyncio.wait_for(waiting, 5)
