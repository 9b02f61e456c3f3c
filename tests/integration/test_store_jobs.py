"""The store's backfill jobs, reconciliation state and record digests, on every backend:
one running job, leases by owner and expiry, cancelling, the stored cursor."""

from __future__ import annotations

import asyncio

from receiver.models import ContactState, ContactUpdate
from receiver.store.base import EventStore
from tests.integration.conftest import Backend

NOW = 1_700_000_000.0


async def test_only_one_backfill_runs_at_a_time_and_the_newest_is_listed_first(
    store: EventStore,
) -> None:
    first = await store.create_backfill(["lead", "customer"], NOW)
    assert first is not None
    assert (first.state, first.stages, first.found, first.cursor) == (
        "running",
        ("lead", "customer"),
        0,
        {},
    )
    assert await store.create_backfill(["lead"], NOW + 1) is None
    assert await store.take_backfill("a", NOW + 2, 60) is not None
    await store.finish_backfill(first.id, "a", "done", None, NOW + 3)
    second = await store.create_backfill(["lead"], NOW + 4)
    assert second is not None and second.id > first.id
    listed = await store.list_backfills(10)
    assert [(j.id, j.state) for j in listed] == [(second.id, "running"), (first.id, "done")]
    done = await store.get_backfill(first.id)
    assert done is not None and done.finished_at == NOW + 3 and done.owner is None


async def test_a_job_is_leased_to_one_owner_until_its_lease_expires(store: EventStore) -> None:
    job = await store.create_backfill(["lead"], NOW)
    assert job is not None
    assert await store.take_backfill("a", NOW, 60) is not None
    assert await store.take_backfill("b", NOW + 30, 60) is None
    cursor = {"window_after_id": None, "after": "200", "last_id": 412}
    advanced = await store.advance_backfill(job.id, "a", (200, 190, 1, 1), cursor, NOW + 40, 60)
    assert advanced is not None
    assert (advanced.found, advanced.queued, advanced.pages, advanced.calls) == (200, 190, 1, 1)
    assert advanced.cursor == cursor and advanced.lease_until == NOW + 100
    assert await store.take_backfill("b", NOW + 90, 60) is None  # renewed by the advance
    taken = await store.take_backfill("b", NOW + 101, 60)
    assert taken is not None and taken.owner == "b" and taken.cursor == cursor
    # "a" stalled past its lease: its next page is not recorded
    assert await store.advance_backfill(job.id, "a", (400, 380, 2, 2), {}, NOW + 102, 60) is None
    await store.release_backfill(job.id, "b")
    assert await store.take_backfill("c", NOW + 103, 60) is not None


async def test_cancel_ends_an_unleased_job_at_once_and_flags_a_leased_one(
    store: EventStore,
) -> None:
    idle = await store.create_backfill(["lead"], NOW)
    assert idle is not None
    cancelled = await store.cancel_backfill(idle.id, NOW + 1)
    assert cancelled is not None and cancelled.state == "cancelled"
    running = await store.create_backfill(["lead"], NOW + 2)
    assert running is not None
    await store.take_backfill("a", NOW + 2, 60)
    flagged = await store.cancel_backfill(running.id, NOW + 3)
    assert flagged is not None and flagged.state == "running" and flagged.cancel_requested
    await store.finish_backfill(running.id, "a", "cancelled", None, NOW + 4)
    assert await store.cancel_backfill(999_999, NOW) is None


async def test_two_stores_racing_to_take_a_job_or_a_pass_let_exactly_one_win(
    backend: Backend, store: EventStore
) -> None:
    other = backend.new() if backend.name != "memory" else store
    if other is not store:
        await other.open()
    try:
        job = await store.create_backfill(["lead"], NOW)
        assert job is not None
        for _ in range(5):
            taken = await asyncio.gather(
                store.take_backfill("a", NOW, 60), other.take_backfill("b", NOW, 60)
            )
            assert sum(t is not None for t in taken) == 1
            winner = "a" if taken[0] is not None else "b"
            await store.release_backfill(job.id, winner)
            passes = await asyncio.gather(
                store.take_reconcile("a", NOW, 60), other.take_reconcile("b", NOW, 60)
            )
            assert sum(p is not None for p in passes) == 1
            winner = "a" if passes[0] is not None else "b"
            await store.finish_reconcile(winner, None, 0, NOW)
    finally:
        if other is not store:
            await other.close()


async def test_the_reconcile_watermark_moves_only_on_success(store: EventStore) -> None:
    assert (await store.reconcile_state()).watermark is None
    state = await store.take_reconcile("a", NOW, 300)
    assert state is not None and state.watermark is None
    assert await store.take_reconcile("b", NOW + 1, 300) is None
    await store.finish_reconcile("a", NOW, 12, NOW + 5)
    after = await store.reconcile_state()
    assert (after.watermark, after.last_run_at, after.found) == (NOW, NOW + 5, 12)
    assert await store.take_reconcile("b", NOW + 6, 300) is not None
    await store.finish_reconcile("b", None, 3, NOW + 9)  # a failed pass
    failed = await store.reconcile_state()
    assert (failed.watermark, failed.last_run_at, failed.found) == (NOW, NOW + 9, 3)


async def test_a_contacts_record_digest_is_kept_with_its_sync_state(store: EventStore) -> None:
    await store.record("a", [], [ContactUpdate(5, "lead", "L5", "lead", 10, "d1")], [], NOW)
    assert await store.get_contact(5) == ContactState(5, "lead", "L5", "lead", 10, "d1")
    await store.record("a", [], [ContactUpdate(5, None, None, None, 11)], [], NOW + 1)
    assert await store.get_contact(5) == ContactState(5, None, None, None, 11, None)
