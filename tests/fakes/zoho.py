"""A fake Zoho CRM org and accounts server, as a Starlette app.

It answers the calls stagesync makes with the documented shapes:

* ``POST /oauth/v2/token`` (``grant_type=refresh_token``): ``{"access_token",
  "api_domain","token_type","expires_in"}``; a wrong refresh token answers ``200`` with
  ``{"error":"invalid_code"}``, as Zoho does;
* ``POST /crm/v8/{Leads|Contacts}/upsert``: at most 100 records, each answered on its
  own (``SUCCESS`` with ``action`` insert or update and ``details.id``, or an error with
  ``code``, ``details.api_name`` and ``message``); ``200`` when all succeed, ``207``
  when some do, ``400`` when none do;
* ``GET /crm/v8/{module}/search?criteria=(Field:equals:value)``: ``200`` with
  ``data``, or ``204`` when nothing matches;
* ``DELETE /crm/v8/{module}/{id}``: ``data[]`` with ``SUCCESS`` or ``INVALID_DATA``.

Lead needs ``Last_Name`` and ``Company``, Contact ``Last_Name``. An expired token
answers ``401 INVALID_TOKEN``. Switches: ``revoke_tokens()``; ``failure`` =
``"rate_limit"`` (``429 TOO_MANY_REQUESTS``), ``"credits"`` (API credits used up),
``"unavailable"`` (``500 INTERNAL_ERROR``) or ``"hang"``; ``reject(id)``
(``INVALID_DATA`` on ``Email``).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CLIENT_ID = "1000.FAKEZOHOCLIENTID0123456789"
CLIENT_SECRET = "fakezohoclientsecret0123456789abcdef"
REFRESH_TOKEN = "1000.fakerefresh.0123456789abcdef"
EXTERNAL_ID_FIELD = "HubSpot_Contact_ID"
UPSERT_LIMIT = 100
REQUIRED = {"Leads": ("Last_Name", "Company"), "Contacts": ("Last_Name",)}
_CRITERIA = re.compile(r"^\((\w+):equals:(.+)\)$")


def zoho_error(code: str, message: str, status: int, **headers: str) -> Response:
    """A whole-call error in Zoho's shape."""
    body = {"code": code, "details": {}, "message": message, "status": "error"}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class FakeZoho:
    """State and switches of one fake org; ``app`` serves it."""

    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    refresh_token: str = REFRESH_TOKEN
    external_id_field: str = EXTERNAL_ID_FIELD
    latency_s: float = 0.0
    failure: str | None = None  # rate_limit | credits | unavailable | hang
    retry_after: str = "1"
    hang_s: float = 3.0
    #: (module, external id) -> record (its "id" included)
    records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    upsert_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(5725767000000417001)
        self._tokens: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/oauth/v2/token", self._token, methods=["POST"]),
                Route("/crm/{version}/{module}/upsert", self._upsert, methods=["POST"]),
                Route("/crm/{version}/{module}/search", self._search, methods=["GET"]),
                Route("/crm/{version}/{module}/{record_id}", self._delete, methods=["DELETE"]),
            ]
        )

    def revoke_tokens(self) -> None:
        """Every token issued so far answers ``INVALID_TOKEN`` from now on."""
        self._tokens.clear()

    def reject(self, hubspot_id: str, message: str = "invalid data") -> None:
        """Refuse this HubSpot id's upserts with ``INVALID_DATA`` on ``Email``."""
        self.rejected[str(hubspot_id)] = message

    def record(self, module: str, hubspot_id: str) -> dict[str, Any] | None:
        """The ``Leads`` or ``Contacts`` record with this external id, if any."""
        return self.records.get((module, str(hubspot_id)))

    async def _token(self, request: Request) -> Response:
        await asyncio.sleep(self.latency_s)
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.calls["token"] += 1
        if (
            form.get("grant_type") != "refresh_token"
            or form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
            or form.get("refresh_token") != self.refresh_token
        ):
            return JSONResponse({"error": "invalid_code"})
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self._tokens.add(token)
        return JSONResponse(
            {
                "access_token": token,
                "api_domain": str(request.base_url).rstrip("/"),
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        )

    async def _guard(self, request: Request, kind: str) -> Response | None:
        await asyncio.sleep(self.latency_s)
        self.calls[kind] += 1
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Zoho-oauthtoken ") not in self._tokens:
            self.calls["unauthorized"] += 1
            return zoho_error("INVALID_TOKEN", "invalid oauth token", 401)
        if request.path_params["module"] not in REQUIRED:
            return zoho_error("INVALID_MODULE", "the module name given seems to be invalid", 400)
        if self.failure == "hang":
            await asyncio.sleep(self.hang_s)
        if self.failure == "rate_limit":
            self.calls["refused"] += 1
            return zoho_error(
                "TOO_MANY_REQUESTS",
                "The number of concurrent requests has exceeded the limit",
                429,
                **{"Retry-After": self.retry_after},
            )
        if self.failure == "credits":
            self.calls["refused"] += 1
            return zoho_error("LIMIT_REACHED", "API credits exhausted for the day", 400)
        if self.failure == "unavailable":
            self.calls["refused"] += 1
            return zoho_error(
                "INTERNAL_ERROR",
                "Internal Server Error occurred while processing this request",
                500,
            )
        return None

    async def _upsert(self, request: Request) -> Response:
        refused = await self._guard(request, "upsert")
        if refused is not None:
            return refused
        module = request.path_params["module"]
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return zoho_error("INVALID_DATA", "body is not JSON", 400)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data:
            return zoho_error("INVALID_DATA", "data is missing", 400)
        if len(data) > UPSERT_LIMIT:
            return zoho_error("LIMIT_EXCEEDED", f"more than {UPSERT_LIMIT} records", 400)
        if body.get("duplicate_check_fields") != [self.external_id_field]:
            return zoho_error(
                "INVALID_DATA", "duplicate_check_fields must be the unique field", 400
            )
        self.upsert_sizes.append(len(data))
        results = [self._upsert_one(module, n, record) for n, record in enumerate(data)]
        ok = sum(r["status"] == "success" for r in results)
        status = 200 if ok == len(results) else 207 if ok else 400
        return JSONResponse({"data": results}, status_code=status)

    def _upsert_one(self, module: str, n: int, record: Any) -> dict[str, Any]:
        key = record.get(self.external_id_field) if isinstance(record, dict) else None
        if not key:
            return _record_error("MANDATORY_NOT_FOUND", self.external_id_field, n)
        key = str(key)
        if key in self.rejected:
            return _record_error("INVALID_DATA", "Email", n, self.rejected[key])
        existing = self.records.get((module, key))
        merged = {**(existing or {}), **record}
        for name in REQUIRED[module]:
            if merged.get(name) in (None, ""):
                return _record_error("MANDATORY_NOT_FOUND", name, n, "required field not found")
        if existing is None:
            merged["id"] = str(next(self._ids))
        self.records[(module, key)] = merged
        return {
            "code": "SUCCESS",
            "duplicate_field": None if existing is None else self.external_id_field,
            "action": "insert" if existing is None else "update",
            "details": {"id": merged["id"], "Modified_Time": "2026-12-06T10:00:00+00:00"},
            "message": "record added" if existing is None else "record updated",
            "status": "success",
        }

    async def _search(self, request: Request) -> Response:
        refused = await self._guard(request, "search")
        if refused is not None:
            return refused
        module = request.path_params["module"]
        match = _CRITERIA.match(request.query_params.get("criteria", ""))
        if match is None or match.group(1) != self.external_id_field:
            return zoho_error("INVALID_QUERY", "invalid query formed", 400)
        value = re.sub(r"\\(.)", r"\1", match.group(2))
        record = self.records.get((module, value))
        if record is None:
            return Response(status_code=204)
        return JSONResponse(
            {"data": [{"id": record["id"]}], "info": {"count": 1, "more_records": False}}
        )

    async def _delete(self, request: Request) -> Response:
        refused = await self._guard(request, "delete")
        if refused is not None:
            return refused
        module, record_id = request.path_params["module"], request.path_params["record_id"]
        for key, record in list(self.records.items()):
            if key[0] == module and record["id"] == record_id:
                del self.records[key]
                return JSONResponse(
                    {
                        "data": [
                            {
                                "code": "SUCCESS",
                                "details": {"id": record_id},
                                "message": "record deleted",
                                "status": "success",
                            }
                        ]
                    }
                )
        return JSONResponse(
            {
                "data": [
                    {
                        "code": "INVALID_DATA",
                        "details": {"id": record_id},
                        "message": "the related id given seems to be invalid",
                        "status": "error",
                    }
                ]
            },
            status_code=400,
        )


def _record_error(
    code: str, api_name: str, n: int, message: str = "invalid data"
) -> dict[str, Any]:
    return {
        "code": code,
        "details": {"api_name": api_name, "json_path": f"$.data[{n}].{api_name}"},
        "message": message,
        "status": "error",
    }
