"""Parsing webhook bodies into storable events, and the SPEC's duplicate key."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from receiver.hubspot.payload import BadBatch, parse_body, to_new_events
from receiver.models import NewEvent
from tests.support.webhooks import event

SPEC_KEYS = (
    "portalId",
    "subscriptionType",
    "eventId",
    "objectId",
    "occurredAt",
    "propertyName",
    "propertyValue",
)


def one(raw: dict[str, Any]) -> NewEvent:
    [new] = to_new_events([raw])
    return new


def stage_change(**overrides: Any) -> dict[str, Any]:
    base = event(501, "lead", event_id=77, occurred_at=1_700_000_000_000)
    return {**base, **overrides}


# -- parse_body --------------------------------------------------------------------------


def test_array_of_objects_is_parsed_in_order() -> None:
    body = orjson.dumps([{"a": 1}, {"b": 2}, {}])
    assert parse_body(body) == [{"a": 1}, {"b": 2}, {}]


def test_empty_array_is_a_valid_batch() -> None:
    assert parse_body(b"[]") == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[{",
        b'{"objectId": 1}',
        b"42",
        b'"text"',
        b"null",
        b"[1, 2]",
        b'[{"objectId": 1}, "x"]',
        b"[[]]",
        b'[{"a": 1}, null]',
        b"\xff\xfe",
    ],
)
def test_anything_but_an_array_of_objects_is_a_bad_batch(body: bytes) -> None:
    with pytest.raises(BadBatch):
        parse_body(body)


# -- to_new_events -----------------------------------------------------------------------


def test_valid_stage_change_keeps_contact_type_time_stage_and_raw() -> None:
    raw = stage_change()
    new = one(raw)
    assert new.invalid_error is None
    assert new.object_id == 501
    assert new.subscription_type == "contact.propertyChange"
    assert new.occurred_at == 1_700_000_000_000
    assert new.stage == "lead"
    assert orjson.loads(new.raw) == raw


def test_property_change_other_than_lifecycle_stage_carries_no_stage() -> None:
    new = one(event(5, property_name="email", property_value="a@example.com"))
    assert new.invalid_error is None and new.stage is None


def test_numeric_custom_stage_value_is_kept_as_text() -> None:
    new = one(stage_change(propertyValue=1234567))
    assert new.stage == "1234567"


def test_event_type_is_accepted_as_the_subscription_type() -> None:
    raw = stage_change()
    raw["eventType"] = raw.pop("subscriptionType")
    new = one(raw)
    assert new.invalid_error is None
    assert new.subscription_type == "contact.propertyChange"


def test_event_type_and_subscription_type_give_the_same_duplicate_key() -> None:
    raw = stage_change()
    aliased = {k: v for k, v in raw.items() if k != "subscriptionType"}
    aliased["eventType"] = raw["subscriptionType"]
    assert one(raw).dedup_key == one(aliased).dedup_key


def test_merge_event_is_about_the_primary_object_id() -> None:
    merge = event(
        111,
        subscription_type="contact.merge",
        primaryObjectId=222,
        mergedObjectIds=[111, 333],
        newObjectId=222,
    )
    assert one(merge).object_id == 222


def test_non_merge_event_ignores_a_primary_object_id() -> None:
    assert one(event(111, "lead", primaryObjectId=222)).object_id == 111


def test_unknown_fields_are_kept_in_raw_but_do_not_invalidate() -> None:
    raw = stage_change(changeFlag="NEW", sourceId="userId:1", somethingNew={"x": [1]})
    new = one(raw)
    assert new.invalid_error is None
    assert orjson.loads(new.raw)["somethingNew"] == {"x": [1]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"objectId": None}, "objectId"),
        ({"objectId": "501"}, "objectId"),
        ({"objectId": 1.5}, "objectId"),
        ({"objectId": True}, "objectId"),
        ({"portalId": "x"}, "portalId"),
        ({"occurredAt": "yesterday"}, "occurredAt"),
        ({"subscriptionType": ""}, "subscriptionType"),
        ({"subscriptionType": 3}, "subscriptionType"),
        ({"eventId": None}, "eventId"),
    ],
)
def test_malformed_event_is_invalid_with_an_error_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    new = one(stage_change(**change))
    assert new.invalid_error is not None and field in new.invalid_error
    assert new.object_id is None and new.subscription_type is None


def test_event_missing_required_fields_is_invalid_listing_them() -> None:
    new = one({"hello": "world"})
    assert new.invalid_error is not None
    for name in ("objectId", "eventId", "portalId", "occurredAt"):
        assert name in new.invalid_error
    assert orjson.loads(new.raw) == {"hello": "world"}


def test_invalid_event_has_a_stable_duplicate_key() -> None:
    raw = {"objectId": "not-a-number", "eventId": 9}
    first, second = one(raw), one(dict(raw))
    assert first.dedup_key == second.dedup_key
    assert one({"objectId": "other", "eventId": 9}).dedup_key != first.dedup_key


def test_one_malformed_event_does_not_affect_the_others() -> None:
    good_a, good_b = event(1, "lead"), event(2, "customer")
    out = to_new_events([good_a, {"objectId": "bad"}, good_b])
    assert [e.invalid_error is None for e in out] == [True, False, True]
    assert [e.object_id for e in out] == [1, None, 2]


# -- the duplicate key -------------------------------------------------------------------


def test_duplicate_key_ignores_the_attempt_number() -> None:
    assert (
        one(stage_change(attemptNumber=0)).dedup_key == one(stage_change(attemptNumber=3)).dedup_key
    )


def test_duplicate_key_ignores_fields_outside_the_spec_list() -> None:
    a = one(stage_change(subscriptionId=1, appId=1, changeSource="CRM"))
    b = one(stage_change(subscriptionId=2, appId=2, changeSource="API"))
    assert a.dedup_key == b.dedup_key


def test_duplicate_key_ignores_key_order() -> None:
    raw = stage_change()
    reordered = dict(reversed(list(raw.items())))
    assert one(raw).dedup_key == one(reordered).dedup_key


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("portalId", 62516),
        ("subscriptionType", "contact.creation"),
        ("eventId", 78),
        ("objectId", 502),
        ("occurredAt", 1_700_000_000_001),
        ("propertyName", "hs_lead_status"),
        ("propertyValue", "customer"),
    ],
)
def test_duplicate_key_differs_when_any_spec_key_differs(key: str, value: Any) -> None:
    assert key in SPEC_KEYS
    assert one(stage_change()).dedup_key != one(stage_change(**{key: value})).dedup_key


def test_duplicate_key_tells_a_missing_property_from_an_empty_one() -> None:
    creation = event(501, subscription_type="contact.creation", event_id=1, occurred_at=5)
    blank = {**creation, "propertyName": "", "propertyValue": ""}
    assert one(creation).dedup_key != one(blank).dedup_key


def test_duplicate_key_tells_a_number_from_its_text() -> None:
    as_text = one(stage_change(propertyValue="1234567"))
    as_number = one(stage_change(propertyValue=1234567))
    assert as_text.dedup_key != as_number.dedup_key


def test_string_event_ids_are_accepted_and_keyed() -> None:
    a = one(stage_change(eventId="abc"))
    assert a.invalid_error is None
    assert a.dedup_key != one(stage_change(eventId="abd")).dedup_key


@pytest.mark.parametrize(
    ("key", "subscription_type"),
    [
        ("objectId", "contact.propertyChange"),
        ("occurredAt", "contact.propertyChange"),
        ("primaryObjectId", "contact.merge"),
    ],
)
def test_stored_integer_beyond_signed_64_bits_makes_the_event_invalid(
    key: str, subscription_type: str
) -> None:
    raw = stage_change(subscriptionType=subscription_type, primaryObjectId=9)
    raw[key] = 2**63
    assert one(raw).invalid_error is not None
