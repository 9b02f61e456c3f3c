"""Salesforce answers onto :mod:`receiver.errors`, in one place. Pure functions.

* ``403 REQUEST_LIMIT_EXCEEDED``: ``RateLimited`` with no ``retry_after`` (Salesforce
  sends no ``Retry-After``; the dispatcher's backoff applies).
* ``5xx``, ``UNABLE_TO_LOCK_ROW``: ``TransientError``.
* ``300`` (key matched several records, code ``MULTIPLE_CHOICES``) and every other
  ``4xx``: ``PermanentError`` with Salesforce's ``errorCode`` and ``message``.

A record's error inside a collection answer is classified by its ``statusCode`` the
same way. ``401`` is handled by the target before it gets here (one token refresh).
Every message passes through ``scrub``, which removes known secrets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from receiver.errors import PermanentError, RateLimited, TransientError, UpstreamError
from receiver.targets.base import UpsertResult
from receiver.targets.http import json_or_none, retry_after

Scrub = Callable[[str], str]

_TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})
_RATE_LIMIT_CODES = frozenset({"REQUEST_LIMIT_EXCEEDED"})
_LIMIT_INFO = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")


def parse_limit_info(header: str | None) -> tuple[int, int] | None:
    """``(used, limit)`` from ``Sforce-Limit-Info: api-usage=used/limit[; ...]``."""
    match = _LIMIT_INFO.search(header or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def classify_error(code: str, message: str) -> UpstreamError:
    """The error for a Salesforce ``errorCode``/``statusCode`` on one call or record."""
    if code in _RATE_LIMIT_CODES:
        return RateLimited(code, message, retry_after=None)
    if code in _TRANSIENT_CODES:
        return TransientError(code, message)
    return PermanentError(code, message)


def error_message(error: Mapping[str, Any], scrub: Scrub) -> str:
    """Salesforce's message for one error, naming its fields when it does not already."""
    text = str(error.get("message") or "").strip()
    fields = error.get("fields")
    names = [str(f) for f in fields] if isinstance(fields, list) else []
    if names and not all(name in text for name in names):
        text = f"{text} (fields: {', '.join(names)})".strip()
    return scrub(text)


def first_error(data: Any, scrub: Scrub) -> tuple[str | None, str | None]:
    """The first ``errorCode`` of an error answer, and every message joined."""
    items = data if isinstance(data, list) else [data]
    errors = [item for item in items if isinstance(item, dict)]
    if not errors:
        return None, None
    code = errors[0].get("errorCode") or errors[0].get("statusCode")
    message = "; ".join(error_message(error, scrub) for error in errors)
    return (str(code) if code else None), message


def response_error(response: httpx.Response, obj: str, key: str, scrub: Scrub) -> UpstreamError:
    """The error for a failed call on ``obj`` records; ``key`` (``field=value``) is named
    when a ``300`` says it matched several records."""
    status = response.status_code
    data = json_or_none(response)
    if status == 300:
        urls = [u for u in data if isinstance(u, str)] if isinstance(data, list) else []
        listed = f": {', '.join(urls[:5])}" if urls else ""
        return PermanentError(
            "MULTIPLE_CHOICES",
            scrub(
                f"{key} matched {len(urls) or 'several'} {obj} records, "
                f"so Salesforce updated none{listed}"
            ),
        )
    code, message = first_error(data, scrub)
    message = message or f"Salesforce answered HTTP {status}"
    if status == 429:
        return RateLimited(code or "http_429", message, retry_after(response))
    if status >= 500:
        return TransientError(code or f"http_{status}", message, retry_after(response))
    return classify_error(code or f"http_{status}", message)


def record_result(item: Any, scrub: Scrub) -> UpsertResult | UpstreamError:
    """One record's result in a collection answer, or its error."""
    if isinstance(item, dict) and item.get("success") is True:
        record_id = item.get("id")
        return UpsertResult(str(record_id or ""), created=item.get("created") is True)
    errors = item.get("errors") if isinstance(item, dict) else None
    found = [
        classify_error(str(e.get("statusCode") or "UNKNOWN_ERROR"), error_message(e, scrub))
        for e in (errors if isinstance(errors, list) else [])
        if isinstance(e, dict)
    ]
    if not found:
        return PermanentError("UNKNOWN_ERROR", "Salesforce gave no reason for the failure")
    # Retrying cannot help a record with any permanent error, so that one wins.
    for wanted in (PermanentError, RateLimited, TransientError):
        for error in found:
            if isinstance(error, wanted):
                return error
    return found[0]
