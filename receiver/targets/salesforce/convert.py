"""Converted Leads: converting one on promotion, and following one a person converted.

* **Following.** Salesforce refuses any update of a converted Lead
  (``CANNOT_UPDATE_CONVERTED_LEAD``). The records refused so are looked up with one SOQL
  query per batch (``ConvertedContactId``); each Contact found gets the external id and
  the fields mapped for a Contact, and the result says ``kind="contact"`` so the
  contact's sync state moves to the Contact.
* **Converting** (``PROMOTION=convert``). A contact promoted to a contact stage has its
  Lead looked up the same way; a Lead found is converted with SOAP ``convertLead`` (no
  Opportunity), a Lead already converted is followed, and the Contact then gets the
  external id and the mapped fields. With no Lead, the caller upserts the Contact.

Every answer is classified as the target's others are, per record where Salesforce
answers per record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from receiver.errors import PermanentError, TransientError, UpstreamError
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.http import json_or_none
from receiver.targets.salesforce.errors import record_result, response_error
from receiver.targets.salesforce.fields import prepare_fields
from receiver.targets.salesforce.soap import (
    CONVERT_LIMIT,
    Converted,
    convert_envelope,
    convert_results,
    parse_document,
)

CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
#: Records one sObject Collections update takes.
UPDATE_LIMIT = 200


class Api(Protocol):
    """What the conversions need of the target: its calls, with auth and the budget."""

    version: str
    external_id_field: str

    async def rest(
        self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None
    ) -> httpx.Response:
        """A REST call under ``/services/data``."""
        ...

    async def soap(self, envelope: Callable[[str], bytes]) -> httpx.Response:
        """A Partner SOAP call; ``envelope`` builds the body around a session id."""
        ...

    def scrub(self, text: str) -> str:
        """``text`` without secrets."""
        ...


@dataclass(frozen=True, slots=True)
class LeadRow:
    """A Lead found by its external id."""

    id: str
    converted: bool
    contact_id: str | None


def soql_string(value: str) -> str:
    """A SOQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_converted_lead(result: UpsertResult | UpstreamError) -> bool:
    """True for Salesforce's refusal to update a converted Lead."""
    return isinstance(result, PermanentError) and result.code == CONVERTED_LEAD


class Conversions:
    """Lead lookups, ``convertLead`` and Contact updates for one target."""

    def __init__(self, api: Api, converted_status: str | None = None) -> None:
        self.api = api
        self._status = converted_status or None
        self.queries = 0  # SOQL queries made, for tests and the bench

    async def follow(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError | None]:
        """Update the Contacts that refused Leads were converted into; None: no Contact."""
        leads = await self.find_leads([r.hubspot_id for r in requests])
        targets: list[tuple[int, str]] = []
        for index, request in enumerate(requests):
            row = leads.get(request.hubspot_id)
            if row is not None and row.contact_id:
                targets.append((index, row.contact_id))
        out: list[UpsertResult | UpstreamError | None] = [None] * len(requests)
        updated = await self.update_contacts([(cid, requests[i]) for i, cid in targets])
        for (index, _), result in zip(targets, updated, strict=True):
            out[index] = result
        return out

    async def promote(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError | None]:
        """Convert the Leads of contacts promoted to Contacts; None: no Lead (upsert it)."""
        leads = await self.find_leads([r.hubspot_id for r in requests])
        out: list[UpsertResult | UpstreamError | None] = [None] * len(requests)
        to_convert = [
            (i, row.id)
            for i, r in enumerate(requests)
            if (row := leads.get(r.hubspot_id)) is not None and not row.converted
        ]
        contacts: list[tuple[int, str]] = [
            (i, row.contact_id)
            for i, r in enumerate(requests)
            if (row := leads.get(r.hubspot_id)) is not None and row.converted and row.contact_id
        ]
        for start in range(0, len(to_convert), CONVERT_LIMIT):
            chunk = to_convert[start : start + CONVERT_LIMIT]
            converted = await self.convert([lead_id for _, lead_id in chunk])
            for (index, _), outcome in zip(chunk, converted, strict=True):
                if isinstance(outcome, Converted):
                    contacts.append((index, outcome.contact_id))
                else:
                    out[index] = outcome
        updated = await self.update_contacts([(cid, requests[i]) for i, cid in contacts])
        for (index, _), result in zip(contacts, updated, strict=True):
            out[index] = result
        return out

    async def find_leads(self, hubspot_ids: Sequence[str]) -> dict[str, LeadRow]:
        """The Leads with these external ids, by external id: one SOQL query."""
        if not hubspot_ids:
            return {}
        field = self.api.external_id_field
        values = ", ".join(soql_string(h) for h in dict.fromkeys(hubspot_ids))
        records = await self.query(
            f"SELECT Id, IsConverted, ConvertedContactId, {field} FROM Lead "
            f"WHERE {field} IN ({values})"
        )
        found: dict[str, LeadRow] = {}
        for record in records:
            key, lead_id = record.get(field), record.get("Id")
            if isinstance(key, str) and isinstance(lead_id, str):
                contact = record.get("ConvertedContactId")
                found[key] = LeadRow(
                    lead_id,
                    record.get("IsConverted") is True,
                    contact if isinstance(contact, str) and contact else None,
                )
        return found

    async def converted_status(self) -> str:
        """``SALESFORCE_CONVERTED_STATUS``, or the org's converted Lead status, read once."""
        if self._status is None:
            records = await self.query(
                "SELECT MasterLabel FROM LeadStatus WHERE IsConverted = true LIMIT 1"
            )
            label = records[0].get("MasterLabel") if records else None
            if not isinstance(label, str) or not label:
                raise PermanentError(
                    "NO_CONVERTED_STATUS",
                    "the Salesforce org has no converted Lead status; set "
                    "SALESFORCE_CONVERTED_STATUS",
                )
            self._status = label
        return self._status

    async def convert(self, lead_ids: Sequence[str]) -> list[Converted | UpstreamError]:
        """Convert up to ``CONVERT_LIMIT`` Leads with SOAP ``convertLead``."""
        status = await self.converted_status()
        response = await self.api.soap(lambda sid: convert_envelope(sid, lead_ids, status))
        root = parse_document(response.content)
        return convert_results(response.status_code, root, len(lead_ids), self.api.scrub)

    async def update_contacts(
        self, items: Sequence[tuple[str, UpsertRequest]]
    ) -> list[UpsertResult | UpstreamError]:
        """Give each Contact (by Id) the external id and the request's Contact fields."""
        results: list[UpsertResult | UpstreamError] = []
        for start in range(0, len(items), UPDATE_LIMIT):
            results += await self._update(items[start : start + UPDATE_LIMIT])
        return results

    async def _update(
        self, items: Sequence[tuple[str, UpsertRequest]]
    ) -> list[UpsertResult | UpstreamError]:
        if not items:
            return []
        field = self.api.external_id_field
        records = [
            {
                "attributes": {"type": "Contact"},
                "id": contact_id,
                field: request.hubspot_id,
                **prepare_fields(
                    "contact", contact_fields(request), external_id_field=field, may_create=False
                ),
            }
            for contact_id, request in items
        ]
        path = f"/services/data/{self.api.version}/composite/sobjects"
        response = await self.api.rest("PATCH", path, {"allOrNone": False, "records": records})
        if response.status_code != 200:
            raise response_error(response, "Contact", field, self.api.scrub)
        data = json_or_none(response)
        if not isinstance(data, list) or len(data) != len(items):
            raise TransientError(
                "bad_response",
                f"Salesforce answered a Contact update of {len(items)} records with something "
                "other than one result per record",
            )
        out: list[UpsertResult | UpstreamError] = []
        for item in data:
            result = record_result(item, self.api.scrub)
            if isinstance(result, UpsertResult):
                result = replace(result, kind="contact")
            out.append(result)
        return out

    async def query(self, soql: str) -> list[dict[str, Any]]:
        """Every record a SOQL query returns, following ``nextRecordsUrl``."""
        self.queries += 1
        path: str | None = f"/services/data/{self.api.version}/query"
        params: dict[str, str] | None = {"q": soql}
        records: list[dict[str, Any]] = []
        while path is not None:
            response = await self.api.rest("GET", path, params=params)
            if response.status_code != 200:
                raise response_error(response, "Lead", self.api.external_id_field, self.api.scrub)
            data = json_or_none(response)
            if not isinstance(data, dict) or not isinstance(data.get("records"), list):
                raise TransientError("bad_response", "Salesforce answered a query without records")
            records += [r for r in data["records"] if isinstance(r, dict)]
            following = data.get("nextRecordsUrl")
            path = following if isinstance(following, str) and not data.get("done") else None
            params = None
        return records


def contact_fields(request: UpsertRequest) -> Mapping[str, Any]:
    """The request's fields as mapped for a Contact."""
    if request.kind == "contact":
        return request.fields
    return request.contact_fields if request.contact_fields is not None else {}
