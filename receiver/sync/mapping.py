"""Field mapping: HubSpot properties to target fields. Pure functions.

A mapping is ``{target_field: hubspot_property}``. The user's ``[mapping.lead]`` and
``[mapping.contact]`` tables add to or override the target's defaults; ``""`` removes a
default field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import orjson

LIFECYCLE_STAGE = "lifecyclestage"


def merge_mapping(defaults: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Defaults with the user's overrides applied (``""`` drops a field)."""
    merged = dict(defaults)
    for field, prop in overrides.items():
        if prop == "":
            merged.pop(field, None)
        else:
            merged[field] = prop
    return merged


def hubspot_properties(*mappings: Mapping[str, str]) -> list[str]:
    """Every HubSpot property to fetch: the lifecycle stage and all mapped ones."""
    props = {LIFECYCLE_STAGE}
    for mapping in mappings:
        props.update(mapping.values())
    return sorted(props)


def map_fields(
    mapping: Mapping[str, str], properties: Mapping[str, str | None]
) -> dict[str, str | None]:
    """Target fields for the properties present; absent properties are left out."""
    return {field: properties[prop] for field, prop in mapping.items() if prop in properties}


def record_digest(kind: str, fields: Mapping[str, str | None]) -> str:
    """A short fingerprint of a record as upserted: its kind and its fields.

    Equal records give equal digests whatever the order of their fields, so a
    reconciliation can tell that a contact's record would not change.
    """
    body = orjson.dumps([kind, dict(fields)], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=16).hexdigest()
