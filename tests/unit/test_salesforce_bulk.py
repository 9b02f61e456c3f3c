"""Bulk API 2.0 pieces that need no org: the CSV written and ``sf__Error`` read."""

from __future__ import annotations

import csv
import io

from receiver.errors import PermanentError, TransientError
from receiver.targets.base import UpsertRequest
from receiver.targets.salesforce.bulk import NULL, bulk_error, write_csv


def scrub(text: str) -> str:
    return text


def test_csv_has_the_key_column_and_leaves_absent_fields_blank() -> None:
    content = write_csv(
        "contact",
        [
            UpsertRequest("contact", "1", {"LastName": "A", "Email": ""}, may_create=False),
            UpsertRequest("contact", "2", {"LastName": 'B, "the" 2nd', "Title": "CTO"}),
        ],
        "HubSpot_Contact_ID__c",
    )
    rows = list(csv.DictReader(io.StringIO(content.decode())))
    assert rows[0] == {
        "HubSpot_Contact_ID__c": "1",
        "Email": NULL,
        "LastName": "A",
        "Title": "",
    }
    assert rows[1]["LastName"] == 'B, "the" 2nd'
    assert rows[1]["Email"] == ""  # not sent for this record: left alone


def test_sf_error_is_classified_by_its_code() -> None:
    error = bulk_error(
        "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --", scrub
    )
    assert isinstance(error, PermanentError)
    assert error.code == "REQUIRED_FIELD_MISSING"
    assert error.message.startswith("Required fields are missing: [LastName]")
    locked = bulk_error("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access:--", scrub)
    assert isinstance(locked, TransientError)


def test_an_unreadable_sf_error_is_a_permanent_unknown_error() -> None:
    error = bulk_error("something went wrong, sorry", scrub)
    assert isinstance(error, PermanentError) and error.code == "UNKNOWN_ERROR"
