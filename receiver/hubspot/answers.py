"""What every HubSpot API client does with an answer: count it, describe it, scrub it.

The batch-read client and the search client share these, so an error says the same
thing in the same words, and the token never reaches a message, whichever API failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from receiver.errors import TransientError

MAX_MESSAGE_CHARS = 300


def text_of(value: object) -> str | None:
    """``value`` when it is a non-empty string, else None (answers are not to be trusted)."""
    return value if isinstance(value, str) and value else None


class CallReporter:
    """Counts calls by status class and turns answers into scrubbed sentences.

    ``label`` names the API in messages (``"HubSpot"``, ``"HubSpot search"``).
    """

    def __init__(self, *, token: str, label: str, on_call: Callable[[str], None] | None) -> None:
        self._token = token
        self._label = label
        self._on_call = on_call

    def record(self, status: str) -> None:
        """Count one call by its status class (``2xx``, ``4xx``, ``5xx`` or ``error``)."""
        if self._on_call is not None:
            self._on_call(status)

    def scrub(self, text: str) -> str:
        """``text`` without the token."""
        return text.replace(self._token, "[redacted]")

    def detail(self, payload: dict[str, Any], response: httpx.Response) -> str:
        """The answer's status and message, cut to a readable length."""
        message = text_of(payload.get("message")) or response.reason_phrase or "no message"
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "..."
        return self.scrub(f"{self._label} answered {response.status_code}: {message}")

    def network_error(self, code: str, what: str, exc: httpx.TransportError) -> TransientError:
        """A call that got no answer: counted as ``error``, retried later."""
        self.record("error")
        reason = str(exc) or type(exc).__name__
        return TransientError(code, self.scrub(f"{self._label} {what}: {reason}"))
