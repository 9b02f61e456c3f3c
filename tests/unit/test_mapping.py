"""Field mapping: defaults merged with the user's tables, and properties mapped to fields."""

from __future__ import annotations

from receiver.sync.mapping import LIFECYCLE_STAGE, hubspot_properties, map_fields, merge_mapping
from receiver.targets.dry_run import DEFAULT_MAPPING

DEFAULTS = {"FirstName": "firstname", "LastName": "lastname", "Email": "email"}


def test_user_mapping_adds_new_fields_to_the_defaults() -> None:
    merged = merge_mapping(DEFAULTS, {"Industry__c": "industry"})
    assert merged == {**DEFAULTS, "Industry__c": "industry"}


def test_user_mapping_overrides_a_default_field() -> None:
    assert merge_mapping(DEFAULTS, {"Email": "work_email"})["Email"] == "work_email"


def test_an_empty_string_removes_a_default_field() -> None:
    assert merge_mapping(DEFAULTS, {"Email": ""}) == {
        "FirstName": "firstname",
        "LastName": "lastname",
    }


def test_removing_a_field_that_is_not_there_is_harmless() -> None:
    assert merge_mapping(DEFAULTS, {"Nope": ""}) == DEFAULTS


def test_merging_leaves_the_defaults_untouched() -> None:
    before = dict(DEFAULTS)
    merge_mapping(DEFAULTS, {"Email": "", "X": "x"})
    assert before == DEFAULTS


def test_the_properties_to_fetch_are_the_stage_and_every_mapped_one_once() -> None:
    props = hubspot_properties({"A": "email", "B": "phone"}, {"C": "email", "D": "company"})
    assert props == sorted({LIFECYCLE_STAGE, "email", "phone", "company"})


def test_the_dry_run_defaults_fetch_names_and_contact_details() -> None:
    props = hubspot_properties(*DEFAULT_MAPPING.values())
    assert {"firstname", "lastname", "email", "phone", "jobtitle", "company"} <= set(props)


def test_fields_are_mapped_from_present_properties_and_absent_ones_left_out() -> None:
    fields = map_fields(DEFAULTS, {"email": "a@example.com", "firstname": None, "other": "x"})
    assert fields == {"Email": "a@example.com", "FirstName": None}


def test_one_property_can_feed_two_fields() -> None:
    assert map_fields({"A": "email", "B": "email"}, {"email": "e"}) == {"A": "e", "B": "e"}
