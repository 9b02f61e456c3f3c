"""Calls to one Salesforce org: the session, one refresh on expiry, and the API budget.

Every call of the target and of its helpers (conversions, Bulk API) goes through
:class:`SalesforceClient`, so each one counts in the metrics, reports the org's API use
(``Sforce-Limit-Info``, or the SOAP ``LimitInfoHeader``) to the budget, and is held back
while the budget is exceeded (:mod:`receiver.targets.salesforce.budget`).

* ``401 INVALID_SESSION_ID`` (a SOAP fault of that code): one token refresh (shared by
  concurrent callers, see :mod:`receiver.targets.salesforce.auth`) and one retry, inside
  the same attempt. Still refused with the new token: ``AuthExpired``.
* Timeouts and network errors: ``TransientError``. Answers are the caller's to classify.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import structlog

from receiver.errors import AuthExpired
from receiver.targets.http import counted_request, json_or_none
from receiver.targets.salesforce.auth import Session, TokenSource
from receiver.targets.salesforce.budget import ApiBudget
from receiver.targets.salesforce.errors import first_error, parse_limit_info
from receiver.targets.salesforce.soap import (
    SOAP_HEADERS,
    fault,
    limit_info,
    parse_document,
    soap_path,
)

log = structlog.get_logger(__name__)

#: Builds a request body around a session's access token (the SOAP ``sessionId``).
Envelope = Callable[[str], bytes]


class SalesforceClient:
    """Authorized, counted, budgeted calls to one org. ``http`` belongs to the caller."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        tokens: TokenSource,
        version: str,
        external_id_field: str,
        budget: ApiBudget,
        max_concurrency: int = 10,
        on_call: Callable[[str], None] | None = None,
        on_limit_info: Callable[[int, int], None] | None = None,
    ) -> None:
        self._http = http
        self.version = version
        self.external_id_field = external_id_field
        self.budget = budget
        self._on_call = on_call
        self._on_limit_info = on_limit_info
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self._budget_lock = asyncio.Lock()
        self.tokens = tokens
        self.api_usage: tuple[int, int] | None = None

    def scrub(self, text: str) -> str:
        """``text`` without any known secret."""
        return self.tokens.scrub(text)

    async def rest(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """A REST call (``path`` from the instance root); ``content`` sends raw bytes."""
        await self._check_budget()
        return await self._authorized(
            method, path, lambda _: content, body, params=params, headers=headers
        )

    async def soap(self, envelope: Envelope) -> httpx.Response:
        """A Partner API SOAP call on the OAuth session; ``envelope(session_id)`` is the body."""
        await self._check_budget()
        response = await self._authorized(
            "POST", soap_path(self.version), envelope, headers=SOAP_HEADERS, soap=True
        )
        usage = limit_info(parse_document(response.content))
        if usage is not None:
            self._observe(usage)
        return response

    async def _check_budget(self) -> None:
        """Raise ``RateLimited`` while the API budget is exceeded, re-checking when due."""
        if not self.budget.paused:
            return
        async with self._budget_lock:
            if self.budget.recheck_due():
                path = f"/services/data/{self.version}/limits"
                response = await self._authorized("GET", path, lambda _: None)
                self.budget.rechecked(
                    json_or_none(response) if response.status_code == 200 else None
                )
                log.info("salesforce_api_budget_rechecked", **self.budget.status())
        if self.budget.paused:
            raise self.budget.refusal()

    async def _authorized(
        self,
        method: str,
        path: str,
        content: Callable[[str], bytes | None],
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        soap: bool = False,
    ) -> httpx.Response:
        session = await self.tokens.session()
        response = await self._send(method, session, path, body, params, content, headers)
        if not _expired(response, soap):
            return response
        session = await self.tokens.refresh(session)  # PermanentError if it cannot
        response = await self._send(method, session, path, body, params, content, headers)
        if _expired(response, soap):
            code, message = first_error(json_or_none(response), self.scrub)
            raise AuthExpired(
                code or "INVALID_SESSION_ID",
                "Salesforce rejected a freshly refreshed access token"
                + (f": {message}" if message else ""),
            )
        return response

    async def _send(
        self,
        method: str,
        session: Session,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        content: Callable[[str], bytes | None],
        extra: dict[str, str] | None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {session.access_token}", "Accept": "application/json"}
        headers.update(extra or {})
        raw = content(session.access_token)
        async with self._semaphore:
            response = await counted_request(
                self._http,
                method,
                session.instance_url + path,
                label="Salesforce",
                on_call=self._on_call,
                json=body if raw is None else None,
                content=raw,
                params=params,
                headers=headers,
            )
        usage = parse_limit_info(response.headers.get("Sforce-Limit-Info"))
        if usage is not None:
            self._observe(usage)
        return response

    def _observe(self, usage: tuple[int, int]) -> None:
        self.api_usage = usage
        self.budget.observe(*usage)
        if self._on_limit_info is not None:
            self._on_limit_info(*usage)


def _expired(response: httpx.Response, soap: bool) -> bool:
    if response.status_code == 401:
        return True
    if not soap or response.status_code != 500:
        return False
    failure = fault(parse_document(response.content))
    return failure is not None and failure[0] == "INVALID_SESSION_ID"
