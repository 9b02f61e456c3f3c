"""Salesforce field conversion and answer classification: the pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx

from receiver.errors import PermanentError, RateLimited, TransientError
from receiver.targets.base import UpsertResult
from receiver.targets.salesforce.errors import (
    classify_error,
    parse_limit_info,
    record_result,
    response_error,
)
from receiver.targets.salesforce.fields import PLACEHOLDER, default_mapping, prepare_fields


def scrub(text: str) -> str:
    return text.replace("s3cret", "[redacted]")


# -- prepare_fields ----------------------------------------------------------------------


def test_prepare_fields_sends_empty_strings_as_null() -> None:
    body = prepare_fields("contact", {"LastName": "Hopper", "Phone": "", "Title": "  "})
    assert body == {"LastName": "Hopper", "Phone": None, "Title": None}


def test_prepare_fields_turns_checkbox_values_into_booleans_but_not_in_text_fields() -> None:
    body = prepare_fields(
        "contact",
        {"LastName": "Hopper", "DoNotCall": "true", "Opted_In__c": "false", "Title": "true"},
    )
    assert body["DoNotCall"] is True
    assert body["Opted_In__c"] is False
    assert body["Title"] == "true"


def test_prepare_fields_turns_ms_epoch_into_a_date_for_date_fields() -> None:
    body = prepare_fields(
        "contact",
        {
            "LastName": "Hopper",
            "Birthdate": "-1230681600000",  # 1931-01-02, before the epoch
            "First_Touch_Date__c": "1714521600000",
            "CloseDate": "2024-05-01T00:00:00.000Z",
            "Renewal_date__c": "2024-06-30",
        },
    )
    assert body["Birthdate"] == "1931-01-02"
    assert body["First_Touch_Date__c"] == "2024-05-01"
    assert body["CloseDate"] == "2024-05-01"
    assert body["Renewal_date__c"] == "2024-06-30"


def test_prepare_fields_turns_ms_epoch_into_iso_utc_for_datetime_fields() -> None:
    body = prepare_fields(
        "lead",
        {
            "LastName": "L",
            "Company": "C",
            "Last_Seen_DateTime__c": "1714566896789",
            "Signup_Date_Time__c": "2024-05-01T12:34:56Z",
        },
    )
    assert body["Last_Seen_DateTime__c"] == "2024-05-01T12:34:56.789Z"
    assert body["Signup_Date_Time__c"] == "2024-05-01T12:34:56Z"


def test_prepare_fields_leaves_numbers_and_lookalikes_as_hubspot_sent_them() -> None:
    body = prepare_fields(
        "lead",
        {
            "LastName": "L",
            "Company": "C",
            "NumberOfEmployees": "250",
            "PostalCode": "02134",
            "Candidate__c": "1714521600000",  # ends in "date" only in lower case
            "Update__c": "true",
            "Score__c": 12,
        },
    )
    assert body["NumberOfEmployees"] == "250"
    assert body["PostalCode"] == "02134"
    assert body["Candidate__c"] == "1714521600000"
    assert body["Update__c"] is True
    assert body["Score__c"] == 12


def test_prepare_fields_sends_missing_last_name_and_lead_company_as_not_provided() -> None:
    assert prepare_fields("lead", {"FirstName": "Ada", "LastName": ""}) == {
        "FirstName": "Ada",
        "LastName": PLACEHOLDER,
        "Company": PLACEHOLDER,
    }
    assert prepare_fields("contact", {"LastName": None}) == {"LastName": PLACEHOLDER}


def test_prepare_fields_adds_no_placeholder_for_absent_fields_of_an_existing_record() -> None:
    assert prepare_fields("lead", {"FirstName": "Ada"}, may_create=False) == {"FirstName": "Ada"}
    assert prepare_fields("contact", {"Email": "g@example.com"}, may_create=False) == {
        "Email": "g@example.com"
    }


def test_prepare_fields_still_replaces_a_cleared_required_field_of_an_existing_record() -> None:
    # Sending null would fail: a cleared LastName keeps the placeholder even on update.
    assert prepare_fields("lead", {"LastName": "", "Company": None}, may_create=False) == {
        "LastName": PLACEHOLDER,
        "Company": PLACEHOLDER,
    }
    assert prepare_fields("lead", {"LastName": " "}, may_create=False) == {"LastName": PLACEHOLDER}


def test_prepare_fields_never_sends_the_external_id_or_id() -> None:
    body = prepare_fields(
        "contact",
        {"LastName": "H", "Id": "003x", "HubSpot_Contact_ID__c": "9", "Other_Key__c": "9"},
    )
    assert body == {"LastName": "H", "Other_Key__c": "9"}
    body = prepare_fields(
        "contact", {"LastName": "H", "Other_Key__c": "9"}, external_id_field="Other_Key__c"
    )
    assert body == {"LastName": "H"}


def test_default_mapping_gives_the_lead_a_company() -> None:
    common = {
        "FirstName": "firstname",
        "LastName": "lastname",
        "Email": "email",
        "Phone": "phone",
        "Title": "jobtitle",
    }
    assert default_mapping("contact") == common
    assert default_mapping("lead") == {**common, "Company": "company"}


def test_parse_limit_info_reads_used_and_limit() -> None:
    assert parse_limit_info("api-usage=18/5000") == (18, 5000)
    assert parse_limit_info("api-usage=110018/100000; api-bursts=1/750") == (110018, 100000)
    assert parse_limit_info(None) is None
    assert parse_limit_info("per-app-api-usage=17/250(appName=x)") is None
    assert parse_limit_info("per-app-api-usage=17/250(appName=x); api-usage=25/5000") == (25, 5000)


# -- answers -------------------------------------------------------------------------------


def test_classify_error_rate_limits_transient_locks_and_fails_the_rest() -> None:
    limited = classify_error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    assert type(limited) is RateLimited
    assert limited.retry_after is None
    assert type(classify_error("UNABLE_TO_LOCK_ROW", "locked")) is TransientError
    for code in (
        "REQUIRED_FIELD_MISSING",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "INVALID_FIELD",
        "DUPLICATES_DETECTED",
        "CANNOT_UPDATE_CONVERTED_LEAD",
        "NOT_FOUND",
    ):
        error = classify_error(code, "no")
        assert type(error) is PermanentError
        assert (error.code, error.message) == (code, "no")


def test_record_result_reads_success_and_prefers_a_permanent_error() -> None:
    ok = {"id": "00Q1", "success": True, "errors": [], "created": True}
    assert record_result(ok, scrub) == UpsertResult("00Q1", created=True)
    mixed = {
        "success": False,
        "errors": [
            {"statusCode": "UNABLE_TO_LOCK_ROW", "message": "locked", "fields": []},
            {"statusCode": "INVALID_FIELD", "message": "bad s3cret", "fields": ["Foo__c"]},
        ],
    }
    error = record_result(mixed, scrub)
    assert type(error) is PermanentError
    assert (error.code, error.message) == ("INVALID_FIELD", "bad [redacted] (fields: Foo__c)")
    unknown = record_result({"success": False}, scrub)
    assert isinstance(unknown, PermanentError)
    assert unknown.code == "UNKNOWN_ERROR"


def test_response_error_maps_status_and_keeps_salesforce_code_and_message() -> None:
    body = [{"message": "Session s3cret", "errorCode": "SERVER_UNAVAILABLE"}]
    outage = response_error(
        httpx.Response(503, json=body, headers={"Retry-After": "7"}), "Lead", "K=1", scrub
    )
    assert type(outage) is TransientError
    assert (outage.code, outage.message, outage.retry_after) == (
        "SERVER_UNAVAILABLE",
        "Session [redacted]",
        7.0,
    )
    plain = response_error(httpx.Response(502, text="<html>"), "Lead", "K=1", scrub)
    assert (type(plain), plain.code) == (TransientError, "http_502")
    missing = response_error(
        httpx.Response(404, json=[{"errorCode": "NOT_FOUND", "message": "gone"}]),
        "Lead",
        "K=1",
        scrub,
    )
    assert (type(missing), missing.code, missing.message) == (PermanentError, "NOT_FOUND", "gone")


def test_response_error_300_names_the_key_and_the_matching_records() -> None:
    urls = ["/services/data/v62.0/sobjects/Lead/00Q1", "/services/data/v62.0/sobjects/Lead/00Q2"]
    error = response_error(httpx.Response(300, json=urls), "Lead", "HubSpot_Contact_ID__c=7", scrub)
    assert type(error) is PermanentError
    assert error.code == "MULTIPLE_CHOICES"
    assert error.message.startswith("HubSpot_Contact_ID__c=7 matched 2 Lead records")
    assert urls[1] in error.message


def test_a_retry_after_date_is_honoured_as_the_other_targets_honour_it() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    answer = httpx.Response(503, text="down", headers={"Retry-After": when})
    error = response_error(answer, "Lead", "K=1", scrub)
    assert type(error) is TransientError
    assert error.retry_after is not None and 100 < error.retry_after <= 120
