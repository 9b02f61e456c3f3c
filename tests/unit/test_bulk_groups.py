"""Upserts held for the bulk path: a backlog's staged, a backfill's gathered until a bulk
job's worth is ready or time lets them go the usual way."""

from __future__ import annotations

import itertools

import pytest

from receiver.dispatch import bulk_groups
from receiver.dispatch.bulk_groups import GATHER_IDLE_S, GATHER_MAX_S, BulkGroups
from receiver.dispatch.work import ContactWork
from receiver.models import ClaimedContact, StoredEvent
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.sync.rules import BACKFILL, RoutingConfig, plan_contact
from tests.support.clock import Clock

CONFIG = RoutingConfig(frozenset(DEFAULT_LEAD_STAGES), frozenset(DEFAULT_CONTACT_STAGES))
MAPPINGS = {"lead": {"Email": "email"}, "contact": {"Email": "email"}}
_ids = itertools.count(1)


def work(object_id: int, subscription_type: str = BACKFILL) -> ContactWork:
    raw = {"id": str(object_id), "properties": {"lifecyclestage": "lead", "email": "a@b.c"}}
    event = StoredEvent(
        id=next(_ids), state="pending", reason=None, object_id=object_id,
        subscription_type=subscription_type, occurred_at=1, stage="lead", attempts=0,
        last_error_code=None, last_error_message=None, received_at=0.0, updated_at=0.0,
        target_kind=None, target_id=None, raw=raw,
    )  # fmt: skip
    claimed = ClaimedContact(object_id, (event,), None)
    out = ContactWork(claimed, plan_contact(claimed.events, None, CONFIG))
    out.resolve({"lifecyclestage": "lead", "email": "a@b.c"}, CONFIG, MAPPINGS)
    return out


def test_backfill_upserts_gather_into_one_bulk_group_across_webhook_rounds() -> None:
    clock = Clock(0.0)
    groups = BulkGroups(threshold=4, clock=clock)
    assert groups.hold([work(1), work(2)], backlog=False) == []
    webhook = work(9, "contact.creation")
    assert groups.hold([webhook], backlog=False) == [webhook]
    assert groups.flush() == []  # an empty claim does not send what gathers
    assert groups.hold([work(3), work(4), work(5)], backlog=False) == []
    assert not groups.ready  # past the threshold, the gathering goes on while pages come
    clock.advance(GATHER_IDLE_S)
    assert groups.release() == []
    assert [[w.object_id for w in group] for group in groups.ready] == [[1, 2, 3, 4, 5]]


def test_a_gathering_of_the_most_records_becomes_a_bulk_group_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk_groups, "GATHER_MAX_RECORDS", 3)
    groups = BulkGroups(threshold=2, clock=Clock(0.0))
    groups.hold([work(1), work(2), work(3), work(4)], backlog=False)
    assert [len(group) for group in groups.ready] == [4]
    assert groups.gather_left() is None


def test_gathered_upserts_go_the_usual_way_after_a_pause() -> None:
    clock = Clock(0.0)
    groups = BulkGroups(threshold=100, clock=clock)
    groups.hold([work(1), work(2)], backlog=False)
    clock.advance(GATHER_IDLE_S - 0.5)
    assert groups.release() == []
    assert groups.gather_left() == 0.5
    clock.advance(0.5)
    assert [w.object_id for w in groups.release()] == [1, 2]
    assert groups.gather_left() is None and not groups.ready


def test_gathered_upserts_go_after_the_longest_gather_while_more_keep_coming() -> None:
    clock = Clock(0.0)
    groups = BulkGroups(threshold=10_000, clock=clock)
    n = 0
    while clock() < GATHER_MAX_S - 1:
        n += 1
        groups.hold([work(n)], backlog=False)
        clock.advance(1.0)
        assert groups.release() == []
    clock.advance(1.0)
    assert len(groups.release()) == n


def test_a_backlog_is_staged_and_a_round_that_is_none_gets_it_back_by_flush() -> None:
    groups = BulkGroups(threshold=3, clock=Clock(0.0))
    webhook = [work(n, "contact.creation") for n in (1, 2)]
    assert groups.hold(webhook, backlog=True) == []
    assert [w.object_id for w in groups.flush()] == [1, 2]
    assert groups.held() == []


def test_without_a_bulk_path_nothing_is_held() -> None:
    groups = BulkGroups(threshold=0, clock=Clock(0.0))
    jobs = [work(1), work(2, "contact.creation")]
    assert groups.hold(jobs, backlog=True) == jobs


def test_while_a_gathered_group_is_out_further_backfill_upserts_go_the_usual_way() -> None:
    clock = Clock(0.0)
    groups = BulkGroups(threshold=2, clock=clock)
    groups.hold([work(1), work(2)], backlog=False)
    clock.advance(GATHER_IDLE_S)
    groups.release()
    [group] = groups.ready
    assert groups.backfill_held() == 2
    later = [work(3)]
    assert groups.hold(later, backlog=False) == later  # one group out at a time
    groups.ready.popleft()
    groups.sent(group)  # its Bulk job ended
    assert groups.backfill_held() == 0
    assert groups.hold([work(4)], backlog=False) == []  # gathering again
    assert groups.backfill_held() == 1
