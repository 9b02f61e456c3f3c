"""HubSpot CRM v3 client: the current properties of contacts, by batch read.

HubSpot is the source of truth: a webhook says *that* a contact changed, and the
dispatcher asks HubSpot what the contact looks like *now*, up to 100 ids a call.

Every way a call can end is mapped once, here, onto the error tree of
:mod:`receiver.errors`, so the dispatcher never looks at HTTP:

* ``200`` / ``207`` (partial: ``errors`` with category ``OBJECT_NOT_FOUND`` and
  ``context.ids``): the contacts found. Missing, archived and merged-away ids are
  simply absent, and the dispatcher marks those events ``not-found``.
* ``429``: :class:`RateLimited`, which delays the work without using an attempt. The
  delay (:func:`rate_limit_delay`) honours ``Retry-After``, else the policy.
* ``5xx``, ``408``, timeouts and network errors: :class:`TransientError`.
* ``401``: :class:`AuthExpired`, transient. A private-app token has no refresh step,
  but an operator who rotates a token restarts with the new one; until then events
  back off and use attempts (SPEC: an expired token is transient) instead of all
  failing at once.
* ``403`` (a missing scope) and every other ``4xx``: :class:`PermanentError` with
  HubSpot's ``category`` and ``message``: retrying cannot help, and once the cause is
  fixed ``stagesync replay --state failed`` sends the events again.

The token is only ever put in the ``Authorization`` header. Messages are built here,
never from the request, and are scrubbed of the token all the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from receiver.errors import AuthExpired, PermanentError, RateLimited, TransientError
from receiver.hubspot.answers import CallReporter, text_of
from receiver.hubspot.pacer import RequestPacer
from receiver.ops.metrics import status_class

BATCH_READ_PATH = "/crm/v3/objects/contacts/batch/read"
#: HubSpot's limit of inputs in one batch read.
MAX_BATCH_SIZE = 100
#: Wait for the rolling ten-second limit when HubSpot sends no ``Retry-After``.
TEN_SECONDLY_WAIT_S = 10.0
#: Wait for the old one-second limit.
SECONDLY_WAIT_S = 1.0
#: Longest wait for the daily limit before trying again. HubSpot resets it at midnight
#: in the portal's time zone, which we do not know, so we re-check every 15 minutes.
DAILY_RECHECK_S = 900.0

_NOT_FOUND_CATEGORIES = frozenset({"OBJECT_NOT_FOUND", "NOT_FOUND"})
_SECONDS_PER_DAY = 86400.0

Properties = dict[str, str | None]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None.

    ``now`` is unix time in seconds, used for the HTTP-date form. A date in the past
    gives 0; a value that is neither form gives None.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def rate_limit_delay(policy: str | None, retry_after_header: str | None, now: float) -> float:
    """Seconds to wait after a HubSpot 429, given its ``policyName`` and ``Retry-After``.

    A valid ``Retry-After`` always wins. Else ``DAILY`` waits until the next midnight
    UTC after ``now`` (unix seconds), but at most :data:`DAILY_RECHECK_S`;
    ``SECONDLY`` waits 1 s; ``TEN_SECONDLY_ROLLING`` and any other policy wait 10 s.
    """
    header = parse_retry_after(retry_after_header, now)
    if header is not None:
        return header
    name = (policy or "").upper()
    if name == "DAILY":
        until_midnight = _SECONDS_PER_DAY - (now % _SECONDS_PER_DAY)
        return min(until_midnight, DAILY_RECHECK_S)
    if name == "SECONDLY":
        return SECONDLY_WAIT_S
    return TEN_SECONDLY_WAIT_S


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


class HubSpotClient:
    """Reads contacts from the HubSpot CRM v3 API with a private-app token.

    ``http`` is owned by the caller, who sets its timeouts and closes it. Every call
    first waits for ``pacer``; ``on_call`` is told each call's outcome as ``"2xx"``,
    ``"4xx"``, ``"5xx"`` or ``"error"`` (no answer), for metrics.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        base_url: str,
        token: str,
        pacer: RequestPacer,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            # Checked here so that httpx never gets to quote a bad header in an error.
            raise ValueError("the HubSpot access token is empty or not a valid header value")
        self._http = http
        self._base = base_url.rstrip("/")
        self._url = self._base + BATCH_READ_PATH
        self._token = token
        self._pacer = pacer
        self._report = CallReporter(token=token, label="HubSpot", on_call=on_call)
        # Unix time before which the DAILY limit is spent: no call goes out until then.
        self._daily_until = 0.0
        self._daily_message = ""

    def __repr__(self) -> str:
        return f"HubSpotClient(url={self._url!r})"

    async def batch_read(
        self, ids: Sequence[int], properties: Sequence[str], now: float
    ) -> dict[int, Properties]:
        """Current ``properties`` of the contacts ``ids`` that exist and are not archived.

        One call per 100 distinct ids, one after the other; the first failing call
        raises and the chunks already read are dropped. Only requested ids are keys: a
        contact merged into another comes back under the other id and is left out.
        ``now`` (unix seconds) only serves to compute a ``DAILY`` rate-limit delay.
        """
        unique = list(dict.fromkeys(int(i) for i in ids))
        wanted = list(dict.fromkeys(properties))
        found: dict[int, Properties] = {}
        for start in range(0, len(unique), MAX_BATCH_SIZE):
            chunk = unique[start : start + MAX_BATCH_SIZE]
            found.update(await self._read_chunk(chunk, wanted, now))
        return found

    async def _read_chunk(
        self, chunk: list[int], properties: list[str], now: float
    ) -> dict[int, Properties]:
        body = {"inputs": [{"id": str(i)} for i in chunk], "properties": properties}
        response = await self._call(
            "POST", self._url, now, "batch read", params={"archived": "false"}, json=body
        )
        return self._parse_found(response, set(chunk))

    async def get_json(self, path: str, now: float) -> dict[str, Any]:
        """``GET {base}{path}``'s JSON object, with the pacer and error mapping of every
        call (the stage catalogue reads the ``lifecyclestage`` property this way)."""
        response = await self._call("GET", self._base + path, now, "read")
        payload = _json_object(response)
        if payload is None:
            raise TransientError(
                "bad_response", f"HubSpot answered {response.status_code} without a JSON object"
            )
        return payload

    async def _call(
        self, method: str, url: str, now: float, what: str, **kwargs: Any
    ) -> httpx.Response:
        """One paced call; a 2xx answer, or the error it maps to."""
        if now < self._daily_until:
            # The SPEC re-checks a spent DAILY limit every 15 minutes, not on every round:
            # each call before then would only earn another 429. Not the shared pacer:
            # holding every caller that long would stall the dispatcher.
            raise RateLimited("RATE_LIMIT", self._daily_message, self._daily_until - now)
        await self._pacer.acquire()
        try:
            response = await self._http.request(
                method, url, headers={"Authorization": f"Bearer {self._token}"}, **kwargs
            )
        except httpx.TimeoutException as exc:
            raise self._report.network_error("timeout", f"{what} timed out", exc) from None
        except httpx.ConnectError as exc:
            raise self._report.network_error(
                "connect_error", f"{what} could not connect", exc
            ) from None
        except httpx.TransportError as exc:
            raise self._report.network_error("network_error", f"{what} failed", exc) from None
        finally:
            self._pacer.done()

        status = response.status_code
        self._report.record(status_class(status))
        if 200 <= status < 300:
            return response
        payload = _json_object(response) or {}
        detail = self._report.detail(payload, response)
        if status == 429:
            raise self._rate_limited(payload, response, detail, now)
        if status >= 500 or status == 408:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
            raise TransientError(f"http_{status}", detail, retry_after=retry_after)
        if status == 401:
            code = text_of(payload.get("category")) or "http_401"
            raise AuthExpired(code, detail)
        if 400 <= status < 500:
            code = text_of(payload.get("category")) or f"http_{status}"
            raise PermanentError(code, detail)
        raise TransientError(f"http_{status}", detail)

    def _parse_found(self, response: httpx.Response, requested: set[int]) -> dict[int, Properties]:
        payload = _json_object(response)
        results = payload.get("results") if payload is not None else None
        if payload is None or not isinstance(results, list):
            raise TransientError(
                "bad_response",
                f"HubSpot batch read answered {response.status_code} without a results list",
            )
        for error in payload.get("errors") or []:
            category = text_of(error.get("category")) if isinstance(error, dict) else None
            if category not in _NOT_FOUND_CATEGORIES:
                # Not a plain "does not exist": marking those ids not-found could be
                # wrong, so the whole chunk is tried again later.
                message = text_of(error.get("message")) if isinstance(error, dict) else None
                raise TransientError(
                    category or "batch_error",
                    self._report.scrub(
                        f"HubSpot batch read partly failed: {message or 'no message'}"
                    ),
                )
        found: dict[int, Properties] = {}
        for item in results:
            if not isinstance(item, dict) or item.get("archived") is True:
                continue
            raw_id = item.get("id")
            try:
                object_id = int(raw_id) if isinstance(raw_id, str | int) else None
            except ValueError:
                object_id = None
            if object_id not in requested:
                continue
            raw = item.get("properties")
            props = raw if isinstance(raw, dict) else {}
            found[object_id] = {
                str(name): None if value is None else str(value) for name, value in props.items()
            }
        return found

    def _rate_limited(
        self, payload: dict[str, Any], response: httpx.Response, detail: str, now: float
    ) -> RateLimited:
        policy = text_of(payload.get("policyName"))
        delay = rate_limit_delay(policy, response.headers.get("Retry-After"), now)
        code = text_of(payload.get("errorType")) or "RATE_LIMIT"
        message = self._report.scrub(
            f"{detail} (policy {policy or 'unknown'}, retry in {delay:.0f} s)"
        )
        if (policy or "").upper() != "DAILY":
            # The rolling window is shared by every caller: hold them all, so that the
            # others do not earn a 429 of their own.
            self._pacer.pause_for(delay)
        else:
            self._daily_until, self._daily_message = now + delay, message
        return RateLimited(code, message, retry_after=delay)
