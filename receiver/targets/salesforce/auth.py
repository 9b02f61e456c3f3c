"""Salesforce access tokens: use the configured one, refresh it once when it expires.

A burst of concurrent upserts that all meet ``401 INVALID_SESSION_ID`` together must
cost one call to the token endpoint, not one per upsert: Salesforce counts token
requests, and a refresh token with rotation enabled is good for only one use. So every
session carries a *generation*; a caller whose call failed asks for a refresh of the
generation it used, under one lock, and whoever comes second finds a newer generation
already there and simply takes it.

Tokens and the client secret live only in this object and in ``Authorization`` headers
or the token request's form body. ``repr`` hides them, and every message this module
builds is built from Salesforce's answer, never from the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from receiver.errors import (
    AuthExpired,
    PermanentError,
    TokenRefused,
    TransientError,
    UpstreamError,
)

log = structlog.get_logger(__name__)

_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True, slots=True)
class Session:
    """An access token, the instance it is good for, and its generation."""

    access_token: str = field(repr=False)
    instance_url: str
    generation: int


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


class TokenSource:
    """Hands out the current Salesforce session and refreshes it at most once per expiry."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        token_url: str,
        access_token: str | None,
        instance_url: str | None,
        client_id: str | None,
        client_secret: str | None,
        refresh_token: str | None,
        on_call: Callable[[str], None] | None = None,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id or None
        self._client_secret = client_secret or None
        self._refresh_token = refresh_token or None
        self._instance_url = instance_url.rstrip("/") if instance_url else None
        self._on_call = on_call
        self._lock = asyncio.Lock()
        self._session: Session | None = None
        self._known_secrets = {s for s in (client_secret, refresh_token, access_token) if s}
        self._has_configured_token = bool(access_token)
        self.refreshes = 0  # token requests that succeeded
        if access_token and self._instance_url:
            self._session = Session(access_token, self._instance_url, 0)
        # A token without an instance URL is unusable: the first refresh supplies both.

    def __repr__(self) -> str:
        generation = self._session.generation if self._session else None
        return (
            f"TokenSource(instance_url={self._instance_url!r}, generation={generation}, "
            f"can_refresh={self.can_refresh})"
        )

    @property
    def can_refresh(self) -> bool:
        """Whether refresh settings are configured (client id and refresh token)."""
        return self._client_id is not None and self._refresh_token is not None

    def secrets(self) -> tuple[str, ...]:
        """Every secret value known now, for scrubbing messages."""
        return tuple(self._known_secrets)

    async def session(self) -> Session:
        """The session to use now; fetches one first when only refresh settings are set."""
        if self._session is not None:
            return self._session
        return await self.refresh(None)

    async def refresh(self, stale: Session | None) -> Session:
        """A session newer than ``stale``: fetched from the token endpoint unless another
        caller already did so while this one waited for the lock.

        Raises ``PermanentError`` when nothing could ever give a session (no token, no
        instance URL, a refresh token Salesforce refuses), ``AuthExpired`` when a
        configured token expired with no refresh settings (retried: a new token and a
        restart let the events through, as the SPEC's "refresh once, then retry" and the
        HubSpot client have it), ``TransientError`` when the endpoint is unreachable or
        failing.
        """
        async with self._lock:
            current = self._session
            if current is not None and (stale is None or current.generation != stale.generation):
                return current
            if not self.can_refresh:
                raise self._no_refresh_error(stale)
            self._session = await self._request_token(current.generation + 1 if current else 1)
            self.refreshes += 1
            log.info("salesforce_token_refreshed", generation=self._session.generation)
            return self._session

    def _no_refresh_error(self, stale: Session | None) -> UpstreamError:
        if stale is None and not self._has_configured_token:
            return PermanentError(
                "NO_CREDENTIALS",
                "no Salesforce access token configured, and no refresh settings "
                "(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN) to obtain one",
            )
        if self._instance_url is None:
            return PermanentError(
                "NO_INSTANCE_URL",
                "no Salesforce instance URL configured, and no refresh settings "
                "(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN) to learn it from a token request",
            )
        return AuthExpired(
            "INVALID_SESSION_ID",
            "the Salesforce access token expired or is invalid, and no refresh token is "
            "configured (set CLIENT_ID, CLIENT_SECRET and REFRESH_TOKEN, or a new ACCESS_TOKEN)",
        )

    async def _request_token(self, generation: int) -> Session:
        form = {"grant_type": "refresh_token", "client_id": self._client_id or ""}
        if self._client_secret:
            form["client_secret"] = self._client_secret
        form["refresh_token"] = self._refresh_token or ""
        try:
            response = await self._http.post(
                self._token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.TimeoutException as exc:
            self._count("error")
            raise TransientError("timeout", "the Salesforce token endpoint timed out") from exc
        except httpx.RequestError as exc:
            self._count("error")
            raise TransientError(
                "connection_error",
                f"could not reach the Salesforce token endpoint ({type(exc).__name__})",
            ) from exc
        self._count(status_class(response.status_code))
        body = _json_or_none(response)
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise TransientError(
                f"http_{response.status_code}",
                f"the Salesforce token endpoint answered {response.status_code}",
            )
        if response.status_code != 200:
            error, description = _oauth_error(body)
            raise TokenRefused(
                error or f"http_{response.status_code}",
                self.scrub(
                    "Salesforce refused the token refresh"
                    + (f": {description}" if description else f" ({response.status_code})")
                ),
            )
        token = body.get("access_token") if isinstance(body, dict) else None
        instance = body.get("instance_url") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TransientError(
                "bad_token_response", "the Salesforce token answer had no access_token"
            )
        if isinstance(instance, str) and instance:
            self._instance_url = instance.rstrip("/")
        self._known_secrets.add(token)
        if self._instance_url is None:
            raise PermanentError(
                "NO_INSTANCE_URL",
                "no Salesforce instance URL configured, and the token answer carried none",
            )
        return Session(token, self._instance_url, generation)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced, cut to a readable length."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text[:_MAX_MESSAGE_CHARS]

    def _count(self, status: str) -> None:
        if self._on_call is not None:
            self._on_call(status)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _oauth_error(body: Any) -> tuple[str | None, str | None]:
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        error if isinstance(error, str) and error else None,
        description if isinstance(description, str) and description else None,
    )
