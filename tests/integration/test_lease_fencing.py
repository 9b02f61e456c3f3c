"""A round is recorded only while its owner still holds the contact's lease.

The dispatcher checks its lease before recording, but a process frozen (SIGSTOP, a long
pause) between that check and the write could commit a stale round after another
instance had claimed the contact and applied a newer event: two final history rows for
one event, and the contact's state moved back. The store checks the lease in the very
transaction that writes, and refuses the contacts whose lease this owner lost; a
contact's ``last_occurred_at`` never moves backwards, whoever writes.
"""

from __future__ import annotations

from receiver.hubspot.payload import to_new_events
from receiver.models import ContactUpdate, EventFilter, Outcome
from receiver.store.base import EventStore
from receiver.store.postgres.store import PostgresStore
from tests.support.webhooks import event

NOW = 1_700_000_000.0
LEASE_S = 4.0


async def _one_event(store: EventStore, contact: int, stage: str, occurred_at: int) -> int:
    await store.ingest(to_new_events([event(contact, stage, occurred_at=occurred_at)]), NOW)
    [newest] = await store.list_events(EventFilter(object_id=contact), 1)
    return newest.id


def _synced(
    event_id: int, contact: int, stage: str, occurred_at: int
) -> tuple[list[Outcome], list[ContactUpdate]]:
    outcome = Outcome(event_id, "synced", stage=stage, target_kind="lead", target_id=f"L{contact}")
    return [outcome], [ContactUpdate(contact, "lead", f"L{contact}", stage, occurred_at)]


async def test_a_round_recorded_after_another_owner_claimed_the_contact_is_refused(
    store: EventStore,
) -> None:
    event_id = await _one_event(store, 1, "lead", 1_000)
    [mine] = await store.claim("a", NOW, LEASE_S, 10)
    # a is frozen past its lease; b claims the contact and records its round.
    [theirs] = await store.claim("b", NOW + LEASE_S + 1, LEASE_S, 10)
    assert mine.object_id == theirs.object_id == 1
    outcomes, contacts = _synced(event_id, 1, "lead", 1_000)
    assert await store.record("b", outcomes, contacts, [1], NOW + LEASE_S + 2) == []
    # a wakes up and records the same event: refused, nothing of it is written.
    stale, stale_contact = _synced(event_id, 1, "customer", 900)
    assert await store.record("a", stale, stale_contact, [1], NOW + LEASE_S + 3) == [1]
    history = await store.history(event_id)
    assert [h.outcome for h in history] == ["synced"]
    stored = await store.get_event(event_id)
    assert stored is not None and stored.attempts == 1 and stored.stage == "lead"
    state = await store.get_contact(1)
    assert state is not None and (state.stage, state.last_occurred_at) == ("lead", 1_000)


async def test_a_round_recorded_after_its_lease_ran_out_is_refused_and_claimed_again(
    store: EventStore,
) -> None:
    event_id = await _one_event(store, 2, "lead", 1_000)
    assert [c.object_id for c in await store.claim("a", NOW, LEASE_S, 10)] == [2]
    outcomes, contacts = _synced(event_id, 2, "lead", 1_000)
    assert await store.record("a", outcomes, contacts, [2], NOW + LEASE_S + 1) == [2]
    stored = await store.get_event(event_id)
    assert stored is not None and stored.state == "pending" and stored.attempts == 0
    assert await store.history(event_id) == []
    # Still due: the next claim, by anyone, takes it again.
    [again] = await store.claim("b", NOW + LEASE_S + 1, LEASE_S, 10)
    assert [e.id for e in again.events] == [event_id]


async def test_a_round_recorded_within_its_lease_is_written_and_releases_the_lease(
    store: EventStore,
) -> None:
    event_id = await _one_event(store, 3, "lead", 1_000)
    await store.claim("a", NOW, LEASE_S, 10)
    outcomes, contacts = _synced(event_id, 3, "lead", 1_000)
    assert await store.record("a", outcomes, contacts, [3], NOW + 1) == []
    stored = await store.get_event(event_id)
    assert stored is not None and stored.state == "synced"
    await _one_event(store, 3, "customer", 2_000)
    assert [c.object_id for c in await store.claim("b", NOW + 2, LEASE_S, 10)] == [3]


async def test_a_contacts_last_occurred_at_never_moves_backwards(store: EventStore) -> None:
    first = await _one_event(store, 4, "customer", 2_000)
    await store.claim("a", NOW, LEASE_S, 10)
    outcomes, contacts = _synced(first, 4, "customer", 2_000)
    assert await store.record("a", outcomes, contacts, [4], NOW + 1) == []
    older = await _one_event(store, 4, "lead", 1_000)
    await store.claim("a", NOW + 2, LEASE_S, 10)
    outcomes, contacts = _synced(older, 4, "lead", 1_000)
    assert await store.record("a", outcomes, contacts, [4], NOW + 3) == []
    state = await store.get_contact(4)
    assert state is not None and (state.stage, state.last_occurred_at) == ("customer", 2_000)


async def test_two_instances_on_one_database_a_late_record_after_the_others_is_refused(
    pg_pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pg_pair
    event_id = await _one_event(a, 5, "lead", 1_000)
    [mine] = await a.claim("instance-a", NOW, LEASE_S, 10)
    [theirs] = await b.claim("instance-b", NOW + LEASE_S + 1, LEASE_S, 10)
    assert mine.object_id == theirs.object_id == 5
    outcomes, contacts = _synced(event_id, 5, "lead", 1_000)
    assert await b.record("instance-b", outcomes, contacts, [5], NOW + LEASE_S + 2) == []
    assert await a.record("instance-a", outcomes, contacts, [5], NOW + LEASE_S + 3) == [5]
    assert [h.outcome for h in await a.history(event_id)] == ["synced"]
