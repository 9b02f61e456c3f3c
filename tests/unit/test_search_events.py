"""Search hits as events: their duplicate keys, the properties they carry, and how a
reconcile event whose record is unchanged is skipped while a backfill event always syncs."""

from __future__ import annotations

import itertools

import orjson

from receiver.dispatch.work import ContactWork
from receiver.hubspot.search import Hit
from receiver.jobs.events import search_event
from receiver.models import ClaimedContact, ContactState, StoredEvent
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.sync.mapping import map_fields, record_digest
from receiver.sync.rules import BACKFILL, RECONCILE, RoutingConfig, carried_properties, plan_contact

CONFIG = RoutingConfig(frozenset(DEFAULT_LEAD_STAGES), frozenset(DEFAULT_CONTACT_STAGES))
MAPPINGS = {
    "lead": {"Email": "email", "LastName": "lastname", "Company": "company"},
    "contact": {"Email": "email", "LastName": "lastname"},
}
_ids = itertools.count(1)


def hit(object_id: int = 7, updated_ms: int = 1_700_000_000_000, **props: str) -> Hit:
    properties: dict[str, str | None] = {"lifecyclestage": "lead", "email": "a@example.com"}
    properties.update(props)
    return Hit(object_id, properties, "2023-11-14T22:13:20.000Z", updated_ms)


def stored(h: Hit, subscription_type: str) -> StoredEvent:
    new = search_event(h, subscription_type)
    return StoredEvent(
        id=next(_ids), state="pending", reason=None, object_id=new.object_id,
        subscription_type=new.subscription_type, occurred_at=new.occurred_at, stage=new.stage,
        attempts=0, last_error_code=None, last_error_message=None, received_at=0.0,
        updated_at=0.0, target_kind=None, target_id=None, raw=orjson.loads(new.raw),
    )  # fmt: skip


def test_a_modification_found_again_has_the_same_key_and_a_new_one_does_not() -> None:
    first = search_event(hit(), RECONCILE)
    assert search_event(hit(), RECONCILE).dedup_key == first.dedup_key
    assert search_event(hit(updated_ms=1_700_000_000_001), RECONCILE).dedup_key != first.dedup_key
    assert search_event(hit(object_id=8), RECONCILE).dedup_key != first.dedup_key


def test_each_backfill_job_queues_a_contact_anew() -> None:
    one = search_event(hit(), BACKFILL, "backfill:1")
    assert search_event(hit(), BACKFILL, "backfill:1").dedup_key == one.dedup_key
    assert search_event(hit(), BACKFILL, "backfill:2").dedup_key != one.dedup_key
    assert search_event(hit(), RECONCILE).dedup_key != one.dedup_key


def test_the_event_holds_what_the_search_returned() -> None:
    new = search_event(hit(lifecyclestage="customer"), BACKFILL, "backfill:1")
    assert orjson.loads(new.raw) == {
        "id": "7",
        "properties": {"lifecyclestage": "customer", "email": "a@example.com"},
        "updatedAt": "2023-11-14T22:13:20.000Z",
    }
    assert (new.object_id, new.occurred_at, new.stage) == (7, 1_700_000_000_000, "customer")
    assert new.subscription_type == "stagesync.backfill"


def test_only_search_events_carry_properties() -> None:
    event = stored(hit(), BACKFILL)
    assert carried_properties(event) == {"lifecyclestage": "lead", "email": "a@example.com"}
    webhook = StoredEvent(
        id=1, state="pending", reason=None, object_id=7,
        subscription_type="contact.creation", occurred_at=1, stage=None, attempts=0,
        last_error_code=None, last_error_message=None, received_at=0.0, updated_at=0.0,
        target_kind=None, target_id=None, raw={"properties": {"email": "x"}},
    )  # fmt: skip
    assert carried_properties(webhook) is None


def resolved(event: StoredEvent, state: ContactState | None) -> ContactWork:
    claimed = ClaimedContact(7, (event,), state)
    job = ContactWork(claimed, plan_contact(claimed.events, state, CONFIG))
    props = carried_properties(event)
    assert props is not None
    job.resolve(props, CONFIG, MAPPINGS)
    return job


def synced_state(fields_from: Hit, kind: str = "lead") -> ContactState:
    fields = map_fields(MAPPINGS[kind], fields_from.properties)
    return ContactState(7, kind, "L-7", "lead", 1, record_digest(kind, fields))


def test_a_reconciled_contact_whose_record_is_unchanged_is_skipped_without_a_call() -> None:
    before = hit(updated_ms=1)
    job = resolved(stored(hit(), RECONCILE), synced_state(before))
    assert job.request is None and job.op is None
    assert [(o.state, o.reason) for o in job.result] == [("skipped", "unchanged")]
    assert job.contact is not None
    assert job.contact.record_digest == synced_state(before).record_digest
    assert job.contact.last_occurred_at == 1_700_000_000_000


def test_a_changed_record_or_another_kind_is_upserted_and_its_digest_kept() -> None:
    before = hit(updated_ms=1)
    changed = resolved(stored(hit(email="b@example.com"), RECONCILE), synced_state(before))
    assert changed.request is not None and changed.request.fields["Email"] == "b@example.com"
    promoted = resolved(stored(hit(lifecyclestage="customer"), RECONCILE), synced_state(before))
    assert promoted.request is not None and promoted.request.kind == "contact"


def test_a_backfill_upserts_a_contact_already_in_sync() -> None:
    job = resolved(stored(hit(), BACKFILL), synced_state(hit(updated_ms=1)))
    assert job.request is not None and job.op == "upsert"
