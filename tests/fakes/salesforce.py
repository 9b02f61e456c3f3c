"""A fake Salesforce org (REST API and OAuth token endpoint), as a Starlette app.

It answers the calls stagesync makes with Salesforce's documented status codes and
body shapes, so the target can be tested over real HTTP without an org:

* upsert by external id, ``PATCH /services/data/vXX.X/sobjects/{Object}/{field}/{id}``:
  ``201`` created, ``200`` updated (``204`` with no body before API v46), ``300`` when the
  key matches several records, ``400`` with ``[{"message","errorCode","fields"}]``;
* sObject Collections upsert, ``PATCH .../composite/sobjects/{Object}/{field}``: ``200``
  with one ``{"id","success","errors":[{"statusCode","message","fields"}],"created"}``
  per record, in order (v46+ only);
* ``GET`` and ``DELETE`` by external id (``204`` deleted, ``404`` none);
* ``POST /services/oauth2/token`` with ``grant_type=refresh_token``, issuing new tokens;
* ``GET /limits`` (``DailyApiRequests``), and ``Sforce-Limit-Info`` on every REST answer,
  with ``set_usage()`` to set the org's use;
* converted Leads: ``convert_lead()`` converts one as a person would, after which its
  upserts fail with ``CANNOT_UPDATE_CONVERTED_LEAD``; ``GET /query`` answers the two SOQL
  queries stagesync makes (Leads by external id, the converted ``LeadStatus``);
  sObject Collections update by Id, ``PATCH .../composite/sobjects``;
* the Partner SOAP endpoint, ``POST /services/Soap/u/{version}``, for ``convertLead``;
* Bulk API 2.0 ingest jobs (``/jobs/ingest``), see :mod:`tests.fakes.salesforce_bulk`.

Lead needs ``LastName`` and ``Company``, Contact needs ``LastName``. Switches turn on
failures: ``revoke_token()`` (401 ``INVALID_SESSION_ID``), ``limit_exceeded`` (403
``REQUEST_LIMIT_EXCEEDED``), ``unavailable`` (503), ``failing_objects`` (503 or a
whole-call 400 ``INVALID_FIELD`` on one object only), ``reject()`` (a validation rule),
``locked`` (``UNABLE_TO_LOCK_ROW``) and ``duplicates`` (key matching several records).
It is stricter than Salesforce in one way: ``Id`` or the external id field in an upsert
body is refused, because stagesync must never send them.

Run it with ``tests.support.servers.running_server(fake.app)``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.salesforce_bulk import FakeBulk

DEFAULT_EXTERNAL_ID_FIELD = "HubSpot_Contact_ID__c"
CLIENT_ID = "3MVG9fakeConsumerKey"
CLIENT_SECRET = "fake-consumer-secret-5d41402abc4b"
REFRESH_TOKEN = "5Aep861fakeRefreshToken9f8e7d"
ID_PREFIXES = {"Lead": "00Q", "Contact": "003"}
REQUIRED = {"Lead": ("LastName", "Company"), "Contact": ("LastName",)}
COLLECTION_LIMIT = 200
SESSION_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
LIMIT_EXCEEDED = [
    {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
]
UNAVAILABLE = [
    {
        "message": "Server temporarily unavailable, try again later",
        "errorCode": "SERVER_UNAVAILABLE",
    }
]
NOT_FOUND = [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
INVALID_FIELD = [
    {
        "message": "No such column 'Rating__c' on sobject of type Lead",
        "errorCode": "INVALID_FIELD",
    }
]
_VERSION = re.compile(r"v(\d+\.\d+)")
CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
_LEADS_BY_KEY = re.compile(
    r"SELECT (?P<fields>[\w, ]+) FROM Lead WHERE (?P<key>\w+) IN \((?P<values>.*)\)"
)
_CONVERTED_STATUS = "SELECT MasterLabel FROM LeadStatus WHERE IsConverted = true LIMIT 1"
_SOQL_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_NS = "urn:partner.soap.sforce.com"


@dataclass
class FakeRecord:
    """One record in the fake org."""

    id: str
    fields: dict[str, Any]


@dataclass
class FakeCall:
    """One request the fake received."""

    kind: str  # token | upsert | collection_upsert | get | delete
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class FakeSalesforce:
    """State and switches of one fake org; ``app`` serves it."""

    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    refresh_token: str = REFRESH_TOKEN
    external_id_field: str = DEFAULT_EXTERNAL_ID_FIELD
    latency_s: float = 0.0
    limit_exceeded: bool = False
    unavailable: bool = False
    #: Object -> 503 (unavailable) or 400 (a mapped field it lacks), for that object only
    failing_objects: dict[str, int] = field(default_factory=dict)
    api_limit: int = 15_000
    api_used: int = 0
    #: (Object, external id) -> record
    records: dict[tuple[str, str], FakeRecord] = field(default_factory=dict)
    #: hubspot id -> validation message, failing that record's upserts
    rejected: dict[str, str] = field(default_factory=dict)
    #: hubspot ids whose upserts fail with UNABLE_TO_LOCK_ROW
    locked: set[str] = field(default_factory=set)
    #: (Object, external id) keys that match several records
    duplicates: set[tuple[str, str]] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    #: The org's converted Lead status (``LeadStatus.MasterLabel`` where ``IsConverted``)
    converted_status: str = "Closed - Converted"
    #: Records without an external id (Contacts a conversion made), by Id
    unkeyed: dict[str, FakeRecord] = field(default_factory=dict)
    #: SOQL queries received, as sent
    queries: list[str] = field(default_factory=list)
    token_refreshes: int = 0
    log: list[FakeCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._valid_tokens: set[str] = set()
        self.access_token = self._new_token()
        self.bulk = FakeBulk(self)
        self.app = Starlette(
            routes=[
                *self.bulk.routes,
                Route("/services/oauth2/token", self._token, methods=["POST"]),
                Route(
                    "/services/data/{version}/sobjects/{obj}/{field}/{value}",
                    self._record,
                    methods=["GET", "PATCH", "DELETE"],
                ),
                Route("/services/data/{version}/limits", self._limits, methods=["GET"]),
                Route("/services/data/{version}/query", self._query, methods=["GET"]),
                Route(
                    "/services/data/{version}/composite/sobjects",
                    self._update_by_id,
                    methods=["PATCH"],
                ),
                Route("/services/Soap/u/{version}", self._soap, methods=["POST"]),
                Route(
                    "/services/data/{version}/composite/sobjects/{obj}/{field}",
                    self._collection,
                    methods=["PATCH"],
                ),
            ]
        )

    # -- switches and helpers for tests ------------------------------------------------

    def set_usage(self, used: int, limit: int | None = None) -> None:
        """Set the org's daily API use (and limit) that the next answers report."""
        self.api_used = used
        if limit is not None:
            self.api_limit = limit

    def convert_lead(self, hubspot_id: str) -> FakeRecord:
        """Convert the Lead of this HubSpot id as a person would; returns the new Contact.

        The Contact gets the Lead's name and e-mail and no external id; the Lead is
        marked converted and refuses updates from then on.
        """
        lead = self.records[("Lead", str(hubspot_id))]
        return self._convert(lead)

    def find_by_id(self, record_id: str) -> FakeRecord | None:
        """The record with this Salesforce Id, keyed or not."""
        for record in (*self.records.values(), *self.unkeyed.values()):
            if record.id == record_id:
                return record
        return None

    def revoke_token(self) -> None:
        """Make every access token issued so far answer 401 ``INVALID_SESSION_ID``."""
        self._valid_tokens.clear()

    def reject(self, hubspot_id: str, message: str = "Email domain is not allowed") -> None:
        """Fail upserts of this HubSpot id with ``FIELD_CUSTOM_VALIDATION_EXCEPTION``."""
        self.rejected[str(hubspot_id)] = message

    def record(self, obj: str, hubspot_id: str) -> FakeRecord | None:
        """The ``Lead`` or ``Contact`` with this HubSpot id, if any."""
        return self.records.get((obj, str(hubspot_id)))

    def _new_token(self) -> str:
        token = f"00Dfake!{secrets.token_urlsafe(24)}"
        self._valid_tokens.add(token)
        return token

    def _new_id(self, obj: str) -> str:
        return f"{ID_PREFIXES[obj]}5g{next(self._ids):013d}"

    # -- OAuth --------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        await asyncio.sleep(self.latency_s)
        form = await request.form()
        self.calls["token"] += 1
        self.log.append(FakeCall("token", "POST", request.url.path, dict(form), None))
        if form.get("grant_type") != "refresh_token":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                status_code=400,
            )
        if form.get("client_id") != self.client_id:
            return JSONResponse(
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
                status_code=400,
            )
        if form.get("client_secret") != self.client_secret:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "invalid client credentials"},
                status_code=400,
            )
        if form.get("refresh_token") != self.refresh_token:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "expired access/refresh token"},
                status_code=400,
            )
        self.access_token = self._new_token()
        self.token_refreshes += 1
        instance = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "access_token": self.access_token,
                "instance_url": instance,
                "id": f"{instance}/id/00Dfake/005fake",
                "token_type": "Bearer",
                "issued_at": "1700000000000",
                "signature": secrets.token_urlsafe(32),
                "scope": "api refresh_token",
            }
        )

    # -- REST API -----------------------------------------------------------------------

    async def _guard(self, request: Request, kind: str, body: Any) -> Response | None:
        """Auth and the call log, then the org-wide switches, in Salesforce's order."""
        refused = await self._authorize(request, kind, body)
        if refused is not None:
            return refused
        if self.limit_exceeded:
            return self._answer(LIMIT_EXCEEDED, 403)
        if self.unavailable:
            return self._answer(UNAVAILABLE, 503)
        obj, fld = request.path_params["obj"], request.path_params.get("field")
        if obj not in ID_PREFIXES or fld not in (None, self.external_id_field):
            return self._answer(NOT_FOUND, 404)
        if obj in self.failing_objects:
            status = self.failing_objects[obj]
            return self._answer(UNAVAILABLE if status == 503 else INVALID_FIELD, status)
        return None

    async def _limits(self, request: Request) -> Response:
        """``GET /limits``: ``DailyApiRequests`` ``Max`` and ``Remaining``, among others."""
        refused = await self._authorize(request, "limits")
        if refused is not None:
            return refused
        daily = {"Max": self.api_limit, "Remaining": max(0, self.api_limit - self.api_used)}
        return self._answer(
            {
                "DailyApiRequests": daily,
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
                "DataStorageMB": {"Max": 1024, "Remaining": 1000},
            }
        )

    async def _authorize(self, request: Request, kind: str, body: Any = None) -> Response | None:
        """Latency, the call log, auth and the org's request count, for any REST call."""
        await asyncio.sleep(self.latency_s)
        self.calls[kind] += 1
        auth = request.headers.get("authorization")
        self.log.append(FakeCall(kind, request.method, request.url.path, body, auth))
        token = auth.removeprefix("Bearer ") if auth and auth.startswith("Bearer ") else None
        if token not in self._valid_tokens:
            return JSONResponse(SESSION_EXPIRED, status_code=401)
        self.api_used += 1
        if self._version(request) is None:
            return self._answer(NOT_FOUND, 404)
        return None

    def _answer(self, content: Any, status: int = 200) -> Response:
        headers = {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_limit}"}
        if content is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(content, status_code=status, headers=headers)

    @staticmethod
    def _version(request: Request) -> float | None:
        match = _VERSION.fullmatch(request.path_params["version"])
        return float(match.group(1)) if match else None

    async def _record(self, request: Request) -> Response:
        body: Any = None
        if request.method == "PATCH":
            body = await _json(request)
        kind = {"GET": "get", "PATCH": "upsert", "DELETE": "delete"}[request.method]
        refused = await self._guard(request, kind, body)
        if refused is not None:
            return refused
        obj, value = request.path_params["obj"], request.path_params["value"]
        url = f"/services/data/{request.path_params['version']}/sobjects/{obj}"
        if (obj, value) in self.duplicates:
            return self._answer([f"{url}/{self._new_id(obj)}", f"{url}/{self._new_id(obj)}"], 300)
        existing = self.records.get((obj, value))
        if request.method == "GET":
            if existing is None:
                return self._answer(_not_found_by_key(value), 404)
            attributes = {"type": obj, "url": f"{url}/{existing.id}"}
            return self._answer({"attributes": attributes, "Id": existing.id, **existing.fields})
        if request.method == "DELETE":
            if self.records.pop((obj, value), None) is None:
                return self._answer(_not_found_by_key(value), 404)
            return self._answer(None, 204)
        if not isinstance(body, dict):
            return self._answer(
                [{"message": "Malformed JSON body", "errorCode": "JSON_PARSER_ERROR"}], 400
            )
        errors = self._check(obj, value, body, existing)
        if errors:
            return self._answer(
                [
                    {"message": e["message"], "errorCode": e["statusCode"], "fields": e["fields"]}
                    for e in errors
                ],
                400,
            )
        record, created = self._apply(obj, value, body)
        version = self._version(request) or 0.0
        if created:
            result = {"id": record.id, "success": True, "errors": []}
            if version >= 46.0:
                result["created"] = True
            response = self._answer(result, 201)
            response.headers["Location"] = f"{url}/{record.id}"
            return response
        if version < 46.0:
            return self._answer(None, 204)
        return self._answer({"id": record.id, "success": True, "errors": [], "created": False})

    async def _collection(self, request: Request) -> Response:
        body = await _json(request)
        refused = await self._guard(request, "collection_upsert", body)
        if refused is not None:
            return refused
        if (self._version(request) or 0.0) < 46.0:
            return self._answer(NOT_FOUND, 404)
        obj = request.path_params["obj"]
        records = body.get("records") if isinstance(body, dict) else None
        all_or_none = body.get("allOrNone", False) if isinstance(body, dict) else False
        if not isinstance(records, list) or not isinstance(all_or_none, bool):
            return self._answer(
                [{"message": "Malformed collection request", "errorCode": "JSON_PARSER_ERROR"}],
                400,
            )
        if len(records) > COLLECTION_LIMIT:
            return self._answer(
                [
                    {
                        "message": f"You can't upsert more than {COLLECTION_LIMIT} records",
                        "errorCode": "EXCEEDED_ID_LIMIT",
                    }
                ],
                400,
            )
        keys = [r.get(self.external_id_field) if isinstance(r, dict) else None for r in records]
        repeated = {k for k, n in Counter(str(k) for k in keys if k is not None).items() if n > 1}
        outcomes: list[list[dict[str, Any]]] = []
        for record, key in zip(records, keys, strict=True):
            outcomes.append(self._check_collection_record(obj, record, key, repeated))
        failed = any(outcomes)
        results: list[dict[str, Any]] = []
        for record, key, errors in zip(records, keys, outcomes, strict=True):
            if errors:
                results.append({"success": False, "errors": errors})
            elif all_or_none and failed:
                rolled_back = _error(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all "
                    "records were valid and the request was using AllOrNone header",
                )
                results.append({"success": False, "errors": [rolled_back]})
            else:
                fields = {
                    k: v
                    for k, v in record.items()
                    if k not in ("attributes", self.external_id_field)
                }
                stored, created = self._apply(obj, str(key), fields)
                results.append({"id": stored.id, "success": True, "errors": [], "created": created})
        return self._answer(results)

    def _check_collection_record(
        self, obj: str, record: Any, key: Any, repeated: set[str]
    ) -> list[dict[str, Any]]:
        if not isinstance(record, dict) or (record.get("attributes") or {}).get("type") != obj:
            return [_error("INVALID_TYPE", f"Each record needs attributes.type = {obj}")]
        if key is None or key == "":
            return [
                _error(
                    "MISSING_ARGUMENT",
                    f"{self.external_id_field} not specified",
                    [self.external_id_field],
                )
            ]
        key = str(key)
        if key in repeated:
            return [_error("DUPLICATE_VALUE", f"Duplicate external id specified: {key}")]
        if (obj, key) in self.duplicates:
            return [
                _error(
                    "DUPLICATE_EXTERNAL_ID",
                    f"{self.external_id_field}: more than one record found for external id "
                    f"field: [{self._new_id(obj)}, {self._new_id(obj)}]",
                    [self.external_id_field],
                )
            ]
        fields = {
            k: v for k, v in record.items() if k not in ("attributes", self.external_id_field)
        }
        return self._check(obj, key, fields, self.records.get((obj, key)))

    def _check(
        self, obj: str, key: str, body: dict[str, Any], existing: FakeRecord | None
    ) -> list[dict[str, Any]]:
        """Errors Salesforce would give this upsert, as collection-style error dicts."""
        forbidden = [k for k in body if k == "Id" or k == self.external_id_field]
        if forbidden:
            return [
                _error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {', '.join(forbidden)}. Please check the "
                    "security settings of this field and verify that it is read/write for "
                    "your profile or permission set.",
                    forbidden,
                )
            ]
        if obj == "Lead" and existing is not None and existing.fields.get("IsConverted"):
            return [_error(CONVERTED_LEAD, "cannot reference converted lead")]
        if key in self.locked:
            return [
                _error(
                    "UNABLE_TO_LOCK_ROW",
                    "unable to obtain exclusive access to this record or 1 records",
                )
            ]
        if key in self.rejected:
            return [_error("FIELD_CUSTOM_VALIDATION_EXCEPTION", self.rejected[key])]
        merged = {**(existing.fields if existing else {}), **body}
        missing = [name for name in REQUIRED[obj] if merged.get(name) in (None, "")]
        if missing:
            return [
                _error(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
            ]
        return []

    def _apply(self, obj: str, key: str, body: dict[str, Any]) -> tuple[FakeRecord, bool]:
        existing = self.records.get((obj, key))
        if existing is not None:
            existing.fields.update(body)
            return existing, False
        record = FakeRecord(self._new_id(obj), {self.external_id_field: key, **body})
        self.records[(obj, key)] = record
        return record, True

    # -- converted Leads, SOQL, update by Id ---------------------------------------------

    def _convert(self, lead: FakeRecord) -> FakeRecord:
        contact = FakeRecord(
            self._new_id("Contact"),
            {k: lead.fields.get(k) for k in ("FirstName", "LastName", "Email") if k in lead.fields},
        )
        self.unkeyed[contact.id] = contact
        lead.fields.update(
            IsConverted=True,
            Status=self.converted_status,
            ConvertedContactId=contact.id,
            ConvertedAccountId=f"001{next(self._ids):015d}",
        )
        return contact

    def _switches(self) -> Response | None:
        if self.limit_exceeded:
            return self._answer(LIMIT_EXCEEDED, 403)
        if self.unavailable:
            return self._answer(UNAVAILABLE, 503)
        return None

    async def _query(self, request: Request) -> Response:
        refused = await self._authorize(request, "query") or self._switches()
        if refused is not None:
            return refused
        soql = request.query_params.get("q", "")
        self.queries.append(soql)
        if soql == _CONVERTED_STATUS:
            return self._answer(_query_answer([{"MasterLabel": self.converted_status}]))
        match = _LEADS_BY_KEY.fullmatch(soql)
        if match is None or match["key"] != self.external_id_field:
            malformed = [{"message": f"unexpected query: {soql}", "errorCode": "MALFORMED_QUERY"}]
            return self._answer(malformed, 400)
        wanted = [f.strip() for f in match["fields"].split(",")]
        rows = []
        for raw in _SOQL_STRING.findall(match["values"]):
            value = re.sub(r"\\(.)", r"\1", raw)
            lead = self.records.get(("Lead", value))
            if lead is None:
                continue
            full = {"Id": lead.id, "IsConverted": False, "ConvertedContactId": None, **lead.fields}
            rows.append({"attributes": {"type": "Lead"}, **{f: full.get(f) for f in wanted}})
        return self._answer(_query_answer(rows))

    async def _update_by_id(self, request: Request) -> Response:
        body = await _json(request)
        refused = await self._authorize(request, "update_by_id", body) or self._switches()
        if refused is not None:
            return refused
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or len(records) > COLLECTION_LIMIT:
            malformed = [{"message": "Malformed update request", "errorCode": "JSON_PARSER_ERROR"}]
            return self._answer(malformed, 400)
        return self._answer([self._update_one(r) for r in records])

    def _update_one(self, item: Any) -> dict[str, Any]:
        obj = (item.get("attributes") or {}).get("type") if isinstance(item, dict) else None
        record = self.find_by_id(str(item.get("id"))) if isinstance(item, dict) else None
        if record is None or obj not in ID_PREFIXES or not record.id.startswith(ID_PREFIXES[obj]):
            failure = _error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            return {"success": False, "errors": [failure]}
        if record.fields.get("IsConverted"):
            return {
                "success": False,
                "errors": [_error(CONVERTED_LEAD, "cannot reference converted lead")],
            }
        fields = {k: v for k, v in item.items() if k not in ("attributes", "id")}
        key = fields.get(self.external_id_field)
        if key is not None:
            holder = self.records.get((obj, str(key)))
            if holder is not None and holder is not record:
                duplicate = _error(
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {self.external_id_field} duplicates value on "
                    f"record with id: {holder.id}",
                    [self.external_id_field],
                )
                return {"success": False, "errors": [duplicate]}
        merged = {**record.fields, **fields}
        missing = [name for name in REQUIRED[obj] if merged.get(name) in (None, "")]
        if missing:
            failure = _error("REQUIRED_FIELD_MISSING", f"Required fields are missing: {missing}")
            return {"success": False, "errors": [failure]}
        record.fields.update(fields)
        if key is not None and record.id in self.unkeyed:
            del self.unkeyed[record.id]
            self.records[(obj, str(key))] = record
        return {"id": record.id, "success": True, "errors": []}

    # -- SOAP convertLead ------------------------------------------------------------

    async def _soap(self, request: Request) -> Response:
        await asyncio.sleep(self.latency_s)
        content = await request.body()
        self.calls["soap"] += 1
        self.log.append(FakeCall("soap", "POST", request.url.path, content.decode(), None))
        try:
            root = SafeET.fromstring(content)
        except Exception:
            return _soap_fault("soapenv:Client", "Unable to parse the request")
        session = root.findtext(f".//{{{PARTNER_NS}}}SessionHeader/{{{PARTNER_NS}}}sessionId")
        if session not in self._valid_tokens:
            return _soap_fault(
                "sf:INVALID_SESSION_ID",
                "INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: Illegal Session",
            )
        self.api_used += 1
        if self.limit_exceeded:
            return _soap_fault("sf:REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        converts = root.findall(f".//{{{PARTNER_NS}}}convertLead/{{{PARTNER_NS}}}leadConverts")
        results = "".join(self._convert_one(node) for node in converts)
        limit = (
            "<soapenv:Header><LimitInfoHeader><limitInfo>"
            f"<current>{self.api_used}</current><limit>{self.api_limit}</limit>"
            "<type>API REQUESTS</type></limitInfo></LimitInfoHeader></soapenv:Header>"
        )
        envelope = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns="{PARTNER_NS}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"{limit}<soapenv:Body><convertLeadResponse>{results}</convertLeadResponse>"
            "</soapenv:Body></soapenv:Envelope>"
        )
        return Response(envelope, media_type="text/xml; charset=utf-8")

    def _convert_one(self, node: Any) -> str:
        ns = f"{{{PARTNER_NS}}}"
        lead_id = node.findtext(f"{ns}leadId") or ""
        status = node.findtext(f"{ns}convertedStatus") or ""
        lead = self.find_by_id(lead_id)
        hubspot_id = lead.fields.get(self.external_id_field) if lead is not None else None
        if lead is None or not lead.id.startswith(ID_PREFIXES["Lead"]):
            return _soap_failure(
                lead_id, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"
            )
        if status != self.converted_status:
            return _soap_failure(lead_id, "INVALID_STATUS", f"invalid convertedStatus: {status}")
        if lead.fields.get("IsConverted"):
            return _soap_failure(lead_id, CONVERTED_LEAD, "This lead was already converted.")
        if hubspot_id in self.rejected:
            return _soap_failure(
                lead_id, "FIELD_CUSTOM_VALIDATION_EXCEPTION", self.rejected[str(hubspot_id)]
            )
        contact = self._convert(lead)
        return (
            f"<result><accountId>{lead.fields['ConvertedAccountId']}</accountId>"
            f"<contactId>{contact.id}</contactId><leadId>{lead.id}</leadId>"
            '<opportunityId xsi:nil="true"/><success>true</success></result>'
        )


def _error(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": fields or []}


def _not_found_by_key(value: str) -> list[dict[str, str]]:
    return [
        {
            "errorCode": "NOT_FOUND",
            "message": f"Provided external ID field does not exist or is not accessible: {value}",
        }
    ]


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _query_answer(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"totalSize": len(records), "done": True, "records": records}


def _soap_fault(code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>{code}</faultcode><faultstring>{escape(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return Response(body, status_code=500, media_type="text/xml; charset=utf-8")


def _soap_failure(lead_id: str, code: str, message: str) -> str:
    return (
        f"<result><errors><message>{escape(message)}</message><statusCode>{code}</statusCode>"
        f"</errors><leadId>{escape(lead_id)}</leadId><success>false</success></result>"
    )
