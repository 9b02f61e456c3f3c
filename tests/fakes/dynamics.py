"""A fake Dataverse environment and Entra ID token endpoint, as a Starlette app.

It answers the calls stagesync makes with the documented shapes:

* ``POST /{tenant}/oauth2/v2.0/token`` (client credentials, ``scope`` = ``{URL}/.default``):
  ``{"token_type","expires_in","access_token"}``; a wrong client answers ``400`` with
  ``{"error","error_description","error_codes"}``;
* ``PATCH /api/data/v9.2/leads(key='value')`` (and ``contacts``): an upsert; with
  ``Prefer: return=representation`` ``201`` created / ``200`` updated and the record,
  else ``204`` with ``OData-EntityId``;
* ``DELETE`` on the same URL: ``204``, or ``404`` when absent;
* ``POST /api/data/v9.2/$batch``: ``multipart/mixed`` of such requests, answered part by
  part; without ``Prefer: odata.continue-on-error`` it stops at the first failure.

Errors are ``{"error":{"code":"0x…","message"}}``. An expired or unknown token answers
``401`` with an empty body and ``WWW-Authenticate``. Switches: ``revoke_tokens()``;
``failure`` = ``"rate_limit"`` (service protection ``429`` with ``Retry-After``),
``"unavailable"`` (``503``) or ``"hang"``; ``reject(id)`` (a ``400`` from a validation
plug-in). It is stricter than Dataverse in one way: the key column in a body is refused.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TENANT_ID = "8f1d2c3b-0000-4000-8000-00000000cafe"
CLIENT_ID = "0b6e5f1a-1111-4111-8111-000000000001"
CLIENT_SECRET = "fake~dynamics~client~secret~9f8e"
ALTERNATE_KEY = "stagesync_hubspotcontactid"
ID_COLUMNS = {"leads": "leadid", "contacts": "contactid"}
BATCH_LIMIT = 1000
_RESOURCE = re.compile(r"^(\w+)\((\w+)='((?:[^']|'')*)'\)$")


def dataverse_error(code: str, message: str, status: int, **headers: str) -> Response:
    """An answer with Dataverse's error body."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


@dataclass
class FakeDynamics:
    """State and switches of one fake environment; ``app`` serves it."""

    tenant_id: str = TENANT_ID
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    alternate_key: str = ALTERNATE_KEY
    latency_s: float = 0.0
    expires_in: int = 3599
    failure: str | None = None  # rate_limit | unavailable | hang
    retry_after: str = "1"
    hang_s: float = 3.0
    base_url: str = ""  # set by the test once the server runs, for scope checks
    #: (entity set, key value) -> record (the id column included)
    records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    batch_sizes: list[int] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tokens: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
                Route("/api/data/{version}/$batch", self._batch, methods=["POST"]),
                Route(
                    "/api/data/{version}/{resource}", self._resource, methods=["PATCH", "DELETE"]
                ),
            ]
        )

    # -- switches -----------------------------------------------------------------------

    def revoke_tokens(self) -> None:
        """Every token issued so far answers ``401`` from now on."""
        self._tokens.clear()

    def reject(
        self, hubspot_id: str, message: str = "Email address is on the blocked list"
    ) -> None:
        """Refuse upserts of this HubSpot id as a validation plug-in would."""
        self.rejected[str(hubspot_id)] = message

    def record(self, entity_set: str, hubspot_id: str) -> dict[str, Any] | None:
        """The record of ``leads`` or ``contacts`` with this key, if any."""
        return self.records.get((entity_set, str(hubspot_id)))

    # -- Entra ID -----------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        await asyncio.sleep(self.latency_s)
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.calls["token"] += 1
        self.token_forms.append(form)
        if request.path_params["tenant"] != self.tenant_id:
            return self._oauth_error("invalid_tenant", "AADSTS90002: Tenant not found.", 90002)
        if form.get("grant_type") != "client_credentials":
            return self._oauth_error("unsupported_grant_type", "AADSTS70003", 70003)
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return self._oauth_error(
                "invalid_client", "AADSTS7000215: Invalid client secret provided.", 7000215
            )
        if self.base_url and form.get("scope") != f"{self.base_url}/.default":
            return self._oauth_error("invalid_scope", "AADSTS70011: The scope is not valid.", 70011)
        token = f"eyJ0eXAiOiJKV1Qi.{secrets.token_urlsafe(24)}"
        self._tokens.add(token)
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "ext_expires_in": self.expires_in,
                "access_token": token,
            }
        )

    @staticmethod
    def _oauth_error(error: str, description: str, code: int) -> Response:
        body = {"error": error, "error_description": description, "error_codes": [code]}
        return JSONResponse(body, status_code=400)

    # -- Web API ------------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        await asyncio.sleep(self.latency_s)
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") not in self._tokens:
            self.calls["unauthorized"] += 1
            return Response(
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if self.failure == "hang":
            await asyncio.sleep(self.hang_s)
        if self.failure == "rate_limit":
            self.calls["refused"] += 1
            return dataverse_error(
                "0x80072322",
                "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                429,
                **{"Retry-After": self.retry_after},
            )
        if self.failure == "unavailable":
            self.calls["refused"] += 1
            return dataverse_error("0x80040216", "An unexpected error occurred.", 503)
        return None

    async def _resource(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        body = None
        if request.method == "PATCH":
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                body = None
        status, headers, answer = self._apply(
            request.method,
            unquote(request.path_params["resource"]),
            body,
            request.headers.get("prefer", ""),
            str(request.base_url).rstrip("/") + f"/api/data/{request.path_params['version']}",
        )
        self.calls["upsert" if request.method == "PATCH" else "delete"] += 1
        if answer is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(answer, status_code=status, headers=headers)

    def _apply(
        self, method: str, resource: str, body: Any, prefer: str, api: str
    ) -> tuple[int, dict[str, str], Any]:
        match = _RESOURCE.match(resource)
        if match is None or match.group(1) not in ID_COLUMNS:
            return 404, {}, _err("0x80060888", f"Resource not found for the segment '{resource}'.")
        entity_set, key, value = match.group(1), match.group(2), match.group(3).replace("''", "'")
        if key != self.alternate_key:
            return 400, {}, _err("0x80040203", f"Invalid alternate key '{key}' for {entity_set}.")
        existing = self.records.get((entity_set, value))
        id_column = ID_COLUMNS[entity_set]
        if method == "DELETE":
            if existing is None:
                return (
                    404,
                    {},
                    _err("0x80040217", f"{entity_set[:-1]} With Ids = {value} Does Not Exist"),
                )
            del self.records[(entity_set, value)]
            return 204, {}, None
        if not isinstance(body, dict):
            return 400, {}, _err("0x80048d19", "Error identified in Payload provided by the user.")
        if key in body or id_column in body:
            return 400, {}, _err("0x80048d19", f"The key column '{key}' must not be in the body.")
        if value in self.rejected:
            return 400, {}, _err("0x80040265", self.rejected[value])
        created = existing is None
        record = existing or {id_column: str(uuid.uuid4()), key: value}
        record.update(body)
        self.records[(entity_set, value)] = record
        entity_id = f"{api}/{entity_set}({key}='{value}')"
        if "return=representation" in prefer:
            return 201 if created else 200, {"OData-EntityId": entity_id}, dict(record)
        return 204, {"OData-EntityId": entity_id}, None

    async def _batch(self, request: Request) -> Response:
        refused = await self._guard(request)
        if refused is not None:
            return refused
        self.calls["batch"] += 1
        content_type = request.headers.get("content-type", "")
        boundary = content_type.partition("boundary=")[2].strip('"')
        if not content_type.startswith("multipart/mixed") or not boundary:
            return dataverse_error("0x80048d19", "The batch request must be multipart/mixed.", 400)
        parts = _split_parts((await request.body()).decode(), boundary)
        if len(parts) > BATCH_LIMIT:
            return dataverse_error(
                "0x80060891", f"Number of requests in a batch exceeds {BATCH_LIMIT}.", 400
            )
        self.batch_sizes.append(len(parts))
        api = str(request.base_url).rstrip("/") + f"/api/data/{request.path_params['version']}"
        keep_going = "odata.continue-on-error" in request.headers.get("prefer", "")
        out_boundary = f"batchresponse_{uuid.uuid4()}"
        chunks = []
        for method, url, headers, body in parts:
            resource = unquote(url.split("/api/data/", 1)[-1].split("/", 1)[-1].split("?")[0])
            status, answer_headers, answer = self._apply(
                method, resource, body, headers.get("prefer", ""), api
            )
            lines = [
                f"--{out_boundary}",
                "Content-Type: application/http",
                "Content-Transfer-Encoding: binary",
                "",
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                "OData-Version: 4.0",
                *(f"{k}: {v}" for k, v in answer_headers.items()),
            ]
            if answer is not None:
                lines.append("Content-Type: application/json; odata.metadata=minimal")
            lines += ["", orjson.dumps(answer).decode() if answer is not None else ""]
            chunks.append("\r\n".join(lines))
            if status >= 400 and not keep_going:
                break
        text = "\r\n".join(chunks) + f"\r\n--{out_boundary}--\r\n"
        return Response(
            text, status_code=200, media_type=f"multipart/mixed; boundary={out_boundary}"
        )


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found"}


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _split_parts(text: str, boundary: str) -> list[tuple[str, str, dict[str, str], Any]]:
    parts = []
    for chunk in text.split(f"--{boundary}")[1:]:
        if chunk.startswith("--"):
            break
        normal = chunk.replace("\r\n", "\n").lstrip("\n")
        _, _, http = normal.partition("\n\n")  # the part's MIME headers
        head, _, payload = http.partition("\n\n")
        lines = head.split("\n")
        method, url, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        payload = payload.strip()
        parts.append((method, url, headers, orjson.loads(payload) if payload else None))
    return parts
