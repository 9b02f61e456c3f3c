"""Salesforce field mapping and value conversion. Pure functions.

HubSpot sends every property as a string (or null); Salesforce wants typed JSON. The
rules here go by the Salesforce field name, because a value alone cannot tell a checkbox
from a text that happens to say "true".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from receiver.models import Kind

DEFAULT_EXTERNAL_ID_FIELD = "HubSpot_Contact_ID__c"
#: Sent for a required field HubSpot has no value for, as HubSpot's own connector does.
PLACEHOLDER = "[not provided]"

OBJECTS: dict[Kind, str] = {"lead": "Lead", "contact": "Contact"}
REQUIRED_FIELDS: dict[Kind, tuple[str, ...]] = {
    "lead": ("LastName", "Company"),
    "contact": ("LastName",),
}
_COMMON_MAPPING = {
    "FirstName": "firstname",
    "LastName": "lastname",
    "Email": "email",
    "Phone": "phone",
    "Title": "jobtitle",
}
# Standard text fields: never turned into booleans, even when the value is "true".
_TEXT_FIELDS = frozenset(
    {"FirstName", "LastName", "MiddleName", "Suffix", "Salutation", "Email", "Phone"}
    | {"MobilePhone", "Title", "Company", "Description", "Street", "City", "State"}
    | {"PostalCode", "Country", "Website", "Industry", "LeadSource", "Department"}
)
_EPOCH_MS = re.compile(r"-?\d{1,15}")
_ISO_DATE_PREFIX = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ].*)?")


def default_mapping(kind: Kind) -> dict[str, str]:
    """Salesforce field -> HubSpot property for a Lead or a Contact."""
    mapping = dict(_COMMON_MAPPING)
    if kind == "lead":
        mapping["Company"] = "company"
    return mapping


def prepare_fields(
    kind: Kind,
    fields: Mapping[str, Any],
    *,
    external_id_field: str = DEFAULT_EXTERNAL_ID_FIELD,
    may_create: bool = True,
) -> dict[str, Any]:
    """Turn mapped HubSpot values (strings or None) into a Salesforce upsert body.

    * The external id field, ``Id`` and ``attributes`` are dropped: the key travels in
      the URL (or the record's key slot), and Salesforce refuses ``Id`` in the body.
    * ``""`` (or only spaces) becomes ``None``: it is how HubSpot says "cleared".
    * Date fields (name ends in ``Date``/``_date``, ``__c`` aside, or is ``Birthdate``)
      take ``YYYY-MM-DD``: HubSpot's ms-epoch string becomes the UTC date, an ISO
      date-time keeps its date part.
    * Date-time fields (name ends in ``DateTime``/``Datetime``/``Date_Time``, ``__c``
      aside) take ISO-8601 UTC: a ms-epoch string becomes ``2024-05-01T12:00:00.000Z``.
    * Exactly ``"true"``/``"false"`` (HubSpot's checkbox values) become booleans,
      except in standard text fields such as ``Title`` or ``Company``.
    * Everything else, numbers included, is sent as HubSpot's string: Salesforce parses
      numeric strings into number fields, and a phone or a zip code keeps its zeros.
    * A required field (``LastName`` for both kinds, ``Company`` for a Lead) that is
      present but empty is sent as ``"[not provided]"``: Salesforce refuses null there.
      An absent one gets the placeholder only when ``may_create`` is True, as a new
      record needs it; on an update (``may_create`` False, the record exists already)
      it stays absent, so the value Salesforce holds is kept rather than overwritten.

    Values that are not strings (already converted by the caller) pass unchanged.
    """
    body: dict[str, Any] = {}
    for name, value in fields.items():
        if name == external_id_field or name.lower() in ("id", "attributes"):
            continue
        body[name] = _convert(name, value)
    for name in REQUIRED_FIELDS[kind]:
        if name in body:
            if body[name] is None:
                body[name] = PLACEHOLDER
        elif may_create:
            body[name] = PLACEHOLDER
    return body


def _convert(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    kind = _temporal_kind(name)
    if kind is not None:
        return _to_temporal(kind, value)
    if value in ("true", "false") and name not in _TEXT_FIELDS:
        return value == "true"
    return value


def _temporal_kind(name: str) -> str | None:
    base = name.removesuffix("__c")
    lower = base.lower()
    if lower.endswith(("datetime", "date_time")):
        return "datetime"
    if base.endswith(("Date", "_date")) or base == "Birthdate":
        return "date"
    return None


def _to_temporal(kind: str, value: str) -> str:
    text = value.strip()
    if _EPOCH_MS.fullmatch(text):
        try:
            when = datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return value
        if kind == "date":
            return when.date().isoformat()
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    match = _ISO_DATE_PREFIX.fullmatch(text)
    if kind == "date" and match:
        return match.group(1)
    return value
