"""The routing rules, row by row of the SPEC's Semantics: stage sets, promotion, demotion,
stale and coalesced events, and every subscription type."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import orjson
import pytest

from receiver.hubspot.payload import to_new_events
from receiver.models import ContactState, StoredEvent
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.sync.rules import (
    RoutingConfig,
    converts,
    decide,
    event_action,
    plan_contact,
    stage_from_webhook,
    stage_sets_overlap,
    webhook_properties,
)
from tests.support.webhooks import event as webhook_event

CONFIG = RoutingConfig(frozenset(DEFAULT_LEAD_STAGES), frozenset(DEFAULT_CONTACT_STAGES))
DELETE_CONFIG = RoutingConfig(CONFIG.lead_stages, CONFIG.contact_stages, on_delete="delete")
# The lifecycle stage is left out on purpose: its change syncs whatever the set says.
MAPPED_CONFIG = RoutingConfig(
    CONFIG.lead_stages, CONFIG.contact_stages, properties=frozenset({"email", "lastname"})
)
_ids = itertools.count(1)


def stored(
    occurred_at: int,
    subscription_type: str = "contact.propertyChange",
    stage: str | None = None,
    object_id: int = 7,
    **raw: Any,
) -> StoredEvent:
    body = {"objectId": object_id, "occurredAt": occurred_at, **raw}
    if stage is not None:
        body.update(propertyName="lifecyclestage", propertyValue=stage)
    return StoredEvent(
        id=next(_ids),
        state="pending",
        reason=None,
        object_id=object_id,
        subscription_type=subscription_type,
        occurred_at=occurred_at,
        stage=stage,
        attempts=0,
        last_error_code=None,
        last_error_message=None,
        received_at=0.0,
        updated_at=0.0,
        target_kind=None,
        target_id=None,
        raw=body,
    )


def state(kind: str | None, last: int | None, stage: str | None = None) -> ContactState:
    return ContactState(7, kind, f"t-{kind}" if kind else None, stage, last)


# -- decide: stage sets, promotion, demotion -----------------------------------------------


@pytest.mark.parametrize("stage", DEFAULT_LEAD_STAGES)
def test_each_default_lead_stage_syncs_as_a_lead(stage: str) -> None:
    assert decide(stage, None, CONFIG).kind == "lead"


@pytest.mark.parametrize("stage", DEFAULT_CONTACT_STAGES)
def test_each_default_contact_stage_syncs_as_a_contact(stage: str) -> None:
    decision = decide(stage, None, CONFIG)
    assert (decision.kind, decision.reason) == ("contact", None)


@pytest.mark.parametrize("stage", ["subscriber", "other", "", "LEAD"])
def test_a_stage_in_neither_set_is_skipped_as_stage_not_synced(stage: str) -> None:
    decision = decide(stage, None, CONFIG)
    assert decision.skip and decision.reason == "stage-not-synced"


def test_custom_stage_ids_route_by_the_configured_sets() -> None:
    config = RoutingConfig(frozenset({"1234567"}), frozenset({"7654321"}))
    assert decide("1234567", None, config).kind == "lead"
    assert decide("7654321", None, config).kind == "contact"
    assert decide("lead", None, config).reason == "stage-not-synced"


def test_promotion_from_lead_to_contact_stage_upserts_a_contact_without_reason() -> None:
    decision = decide("customer", "lead", CONFIG)
    assert (decision.kind, decision.reason) == ("contact", None)


def test_demotion_keeps_a_contact_a_contact_with_reason_no_demotion() -> None:
    decision = decide("lead", "contact", CONFIG)
    assert (decision.kind, decision.reason) == ("contact", "no-demotion")


def test_a_lead_moving_between_lead_stages_stays_a_lead() -> None:
    assert decide("salesqualifiedlead", "lead", CONFIG).kind == "lead"


def test_no_stage_at_all_is_skipped_as_stage_unknown() -> None:
    decision = decide(None, None, CONFIG)
    assert decision.skip and decision.reason == "stage-unknown"


def test_overlapping_stage_sets_are_named() -> None:
    assert stage_sets_overlap(["lead", "x", "y"], ["y", "x", "customer"]) == ["x", "y"]
    assert stage_sets_overlap(DEFAULT_LEAD_STAGES, DEFAULT_CONTACT_STAGES) == []


# -- subscription types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "subscription_type",
    ["contact.propertyChange", "contact.creation", "contact.restore", "contact.merge"],
)
def test_change_creation_restore_and_merge_events_sync(subscription_type: str) -> None:
    assert event_action(subscription_type, CONFIG) == ("sync", None)


def test_privacy_deletion_deletes_whatever_on_delete_says() -> None:
    assert event_action("contact.privacyDeletion", CONFIG) == ("delete", None)
    assert event_action("contact.privacyDeletion", DELETE_CONFIG) == ("delete", None)


def test_deletion_is_ignored_by_default() -> None:
    assert event_action("contact.deletion", CONFIG) == ("skip", "deletion-ignored")


def test_deletion_deletes_when_on_delete_is_delete() -> None:
    assert event_action("contact.deletion", DELETE_CONFIG) == ("delete", None)


@pytest.mark.parametrize(
    "subscription_type", ["contact.associationChange", "company.creation", "deal.deletion", None]
)
def test_any_other_subscription_type_is_unsupported(subscription_type: str | None) -> None:
    assert event_action(subscription_type, CONFIG) == ("skip", "unsupported")


def test_a_change_of_the_stage_or_a_mapped_property_syncs() -> None:
    for name in ("lifecyclestage", "email", "lastname"):
        assert event_action("contact.propertyChange", MAPPED_CONFIG, name) == ("sync", None)


def test_a_change_of_a_property_that_is_neither_stage_nor_mapped_is_unsupported() -> None:
    action = event_action("contact.propertyChange", MAPPED_CONFIG, "hs_analytics_source")
    assert action == ("skip", "unsupported")


def test_without_a_property_set_every_property_change_syncs() -> None:
    assert event_action("contact.propertyChange", CONFIG, "hs_analytics_source") == ("sync", None)


@pytest.mark.parametrize(
    "subscription_type", ["contact.creation", "contact.restore", "contact.merge"]
)
def test_creation_restore_and_merge_sync_whatever_the_property_set(
    subscription_type: str,
) -> None:
    assert event_action(subscription_type, MAPPED_CONFIG, "hs_analytics_source") == ("sync", None)


def test_a_merge_event_is_about_the_primary_object_id() -> None:
    raw = webhook_event(
        11, subscription_type="contact.merge", primaryObjectId=22, mergedObjectIds=[11]
    )
    (new,) = to_new_events([raw])
    assert new.object_id == 22 and new.subscription_type == "contact.merge"


def test_the_subscription_type_is_read_from_event_type_too() -> None:
    raw = webhook_event(5, "lead")
    raw["eventType"] = raw.pop("subscriptionType")
    (new,) = to_new_events([raw])
    assert (new.subscription_type, new.stage) == ("contact.propertyChange", "lead")


# -- plan_contact: coalescing, staleness, deletions --------------------------------------


def test_several_pending_events_coalesce_into_the_newest() -> None:
    a, b, c = stored(300, stage="lead"), stored(100, stage="customer"), stored(200)
    plan = plan_contact([a, b, c], None, CONFIG)
    assert plan.carrier is a
    assert [e.id for e in plan.coalesced] == [b.id, c.id] and plan.skipped == ()


def test_same_time_events_coalesce_into_the_last_stored() -> None:
    a, b = stored(100, stage="lead"), stored(100, stage="customer")
    assert plan_contact([b, a], None, CONFIG).carrier is b


def test_an_event_older_than_the_applied_state_is_stale() -> None:
    old, new = stored(100, stage="customer"), stored(300, stage="lead")
    plan = plan_contact([old, new], state("lead", 200), CONFIG)
    assert plan.skipped == ((old, "stale"),)
    assert plan.carrier is new and plan.coalesced == ()


def test_an_event_as_old_as_the_applied_state_is_not_stale() -> None:
    again = stored(200, stage="lead")
    assert plan_contact([again], state("lead", 200), CONFIG).carrier is again


def test_only_stale_events_leave_nothing_to_sync() -> None:
    plan = plan_contact([stored(1), stored(2)], state("contact", 5), CONFIG)
    assert plan.carrier is None and [r for _, r in plan.skipped] == ["stale", "stale"]


def test_unsupported_and_ignored_events_are_skipped_beside_a_sync() -> None:
    sync = stored(100, stage="lead")
    other = stored(200, "contact.associationChange")
    gone = stored(300, "contact.deletion")
    plan = plan_contact([sync, other, gone], None, CONFIG)
    assert plan.carrier is sync
    assert [(e.id, r) for e, r in plan.skipped] == [
        (other.id, "unsupported"),
        (gone.id, "deletion-ignored"),
    ]


def test_a_change_of_an_unmapped_property_is_skipped_unsupported_beside_a_mapped_one() -> None:
    mail = stored(100, propertyName="email", propertyValue="a@example.com")
    noise = stored(200, propertyName="hs_analytics_source", propertyValue="DIRECT")
    plan = plan_contact([noise, mail], None, MAPPED_CONFIG)
    assert plan.carrier is mail and plan.coalesced == ()
    assert plan.skipped == ((noise, "unsupported"),)


def test_privacy_deletion_plans_a_delete_and_older_syncs_are_stale() -> None:
    sync = stored(100, stage="lead")
    erase = stored(200, "contact.privacyDeletion")
    plan = plan_contact([sync, erase], state("lead", 50), CONFIG)
    assert plan.delete is erase and plan.carrier is None
    assert plan.skipped == ((sync, "stale"),) and plan.deferred == ()


def test_several_deletions_run_once_and_the_others_ride_on_the_newest() -> None:
    first, second = stored(100, "contact.privacyDeletion"), stored(200, "contact.privacyDeletion")
    plan = plan_contact([second, first], None, CONFIG)
    assert plan.delete is second and plan.delete_riders == (first,)


def test_a_sync_newer_than_a_deletion_is_deferred_to_the_next_round() -> None:
    gone = stored(100, "contact.deletion")
    back = stored(200, "contact.restore")
    plan = plan_contact([back, gone], None, DELETE_CONFIG)
    assert plan.delete is gone and plan.carrier is None and plan.deferred == (back,)


def test_a_deletion_older_than_the_applied_state_is_stale() -> None:
    gone = stored(100, "contact.deletion")
    plan = plan_contact([gone], state("lead", 200), DELETE_CONFIG)
    assert plan.delete is None and plan.skipped == ((gone, "stale"),)


def test_a_privacy_deletion_is_carried_out_even_when_older_than_the_state() -> None:
    erase = stored(100, "contact.privacyDeletion")
    assert plan_contact([erase], state("lead", 200), CONFIG).delete is erase


# -- what the webhook itself carried (no token) ------------------------------------------


def test_webhook_properties_keep_the_newest_value_of_each_property() -> None:
    events = [
        stored(300, propertyName="email", propertyValue="new@example.com"),
        stored(100, propertyName="email", propertyValue="old@example.com"),
        stored(200, stage="lead"),
        stored(250, "contact.creation"),
    ]
    assert webhook_properties(events) == {"email": "new@example.com", "lifecyclestage": "lead"}


def test_a_null_property_value_is_carried_as_none() -> None:
    assert webhook_properties([stored(1, propertyName="phone", propertyValue=None)]) == {
        "phone": None
    }


def test_the_webhook_stage_is_the_newest_carried_one() -> None:
    events = [stored(300), stored(200, stage="customer"), stored(100, stage="lead")]
    assert stage_from_webhook(events, state("lead", 50, "lead")) == "customer"


def test_without_a_carried_stage_the_last_synced_stage_is_used() -> None:
    assert stage_from_webhook([stored(300)], state("lead", 50, "marketingqualifiedlead")) == (
        "marketingqualifiedlead"
    )


def test_a_creation_event_for_an_unknown_contact_has_no_stage() -> None:
    assert stage_from_webhook([stored(1, "contact.creation")], None) is None


def test_stored_raw_events_round_trip_through_json() -> None:
    raw = webhook_event(3, "lead")
    (new,) = to_new_events([raw])
    assert orjson.loads(new.raw) == raw and new.stage == "lead"


@pytest.mark.parametrize(
    ("promotion", "stage", "previous", "expected"),
    [
        ("convert", "customer", "lead", True),
        ("convert", "customer", None, True),  # a Lead made before stagesync knew it
        ("convert", "customer", "contact", False),  # already a Contact
        ("convert", "lead", "lead", False),  # still a Lead
        ("create-contact", "customer", "lead", False),
    ],
)
def test_convert_is_asked_for_a_contact_not_yet_synced_as_one_under_promotion_convert(
    promotion: Literal["create-contact", "convert"],
    stage: str,
    previous: str | None,
    expected: bool,
) -> None:
    config = RoutingConfig(CONFIG.lead_stages, CONFIG.contact_stages, promotion=promotion)
    assert converts(decide(stage, previous, config), previous, config) is expected
