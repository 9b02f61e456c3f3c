"""Small pieces every HTTP target shares: status classes, JSON bodies, ``Retry-After``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from receiver.errors import TransientError


def status_class(status: int) -> str:
    """``"2xx"``, ``"4xx"`` or ``"5xx"`` for an HTTP status (``3xx`` counts as ``4xx``).

    Salesforce's only 3xx is ``300``, a key matching several records: a failed call
    the client must fix, so it is counted with the client errors.
    """
    if 200 <= status < 300:
        return "2xx"
    if status >= 500:
        return "5xx"
    return "4xx"


def json_or_none(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it has none."""
    try:
        return response.json()
    except ValueError:
        return None


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def body_excerpt(response: httpx.Response, chars: int = 200) -> str:
    """The start of the answer's body on one line, for an error message."""
    return " ".join(response.text.split())[:chars]


async def counted_request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    label: str,
    on_call: Callable[[str], None] | None,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP call to the CRM named ``label``, counted by status class in ``on_call``.

    No answer at all (a timeout, a refused connection) is a ``TransientError``: counted as
    ``error`` and retried later. The answer itself, whatever its status, is the caller's.
    """
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        if on_call is not None:
            on_call("error")
        raise TransientError("timeout", f"{label} {method} timed out") from exc
    except httpx.RequestError as exc:
        if on_call is not None:
            on_call("error")
        raise TransientError(
            "connection_error", f"could not reach {label} ({type(exc).__name__})"
        ) from exc
    if on_call is not None:
        on_call(status_class(response.status_code))
    return response
