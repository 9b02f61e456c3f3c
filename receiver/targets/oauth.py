"""OAuth access tokens for the CRM targets, written once: get, use, refresh once, share.

Salesforce (refresh token), Dynamics 365 (Entra client credentials) and Zoho CRM
(refresh token) all follow one rule: use the current token; when the CRM says it has
expired, fetch a new one and retry once, inside the same attempt; and never fetch twice
for one expiry, however many calls met it together. A token endpoint counts requests
(Zoho refuses more than a few a minute) and a rotating refresh token is good for one
use, so a burst of 200 concurrent upserts meeting one expiry must cost one token call.

Every token carries a *generation*. A caller whose call was refused asks for a token
newer than the one it used, under one lock; whoever comes second finds a newer
generation already there and takes it (single flight). A token whose answer said
``expires_in`` is also replaced shortly before it runs out, so most expiries cost no
refused call at all.

Why not Authlib's ``AsyncOAuth2Client``: it is its own ``httpx.AsyncClient`` subclass,
while targets share the app's client (its timeouts, its connection pool, its call
metrics). It refreshes on the clock only, never on a 401 answer (a token revoked early,
or Zoho's ``INVALID_TOKEN`` in a body), so the "refresh once on refusal" step would
still be ours; it raises its own ``OAuthError`` and httpx errors, which would still
need mapping onto :mod:`receiver.errors` (a refused grant fails events, an unreachable
endpoint retries them); Zoho's ``Zoho-oauthtoken`` scheme is not a bearer token; and it
would bring ``cryptography`` and ``joserfc`` for JOSE features no target uses.

Tokens and client secrets live only in this object and in the headers or form bodies
they are sent in. ``repr`` hides them, and :meth:`TokenSource.scrub` removes them from
any message built from a CRM's answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from receiver.errors import (
    AuthExpired,
    PermanentError,
    RateLimited,
    TokenRefused,
    TransientError,
    UpstreamError,
)
from receiver.targets.http import counted_request, json_or_none, retry_after

log = structlog.get_logger(__name__)

_MAX_MESSAGE_CHARS = 300
#: Replace a token this long before its ``expires_in`` runs out (at most half its life).
EARLY_S = 60.0


@dataclass(frozen=True, slots=True)
class Token:
    """An access token, its generation, when to replace it, and its answer's other keys.

    ``extras`` holds what the token answer said besides the token (Salesforce's
    ``instance_url``, Zoho's ``api_domain``), as the target's ``parse`` kept them.
    """

    access_token: str = field(repr=False)
    generation: int
    expires_at: float | None = None  # on the source's clock; None: until refused
    extras: Mapping[str, str] = field(default_factory=dict)


#: What a target does when it cannot refresh: the error to raise, given the stale token.
NoRefresh = Callable[["Token | None"], UpstreamError]
#: Keeps what a target needs from a token answer (may raise ``PermanentError``).
ParseAnswer = Callable[[Mapping[str, Any]], dict[str, str]]


class TokenSource:
    """Hands out the current token and replaces it at most once per expiry.

    Args:
        http: the shared client the token request goes through.
        label: the CRM's name for messages (``"Salesforce"``).
        token_url: the token endpoint.
        form: the token request's form (grant type, client id and secret, refresh
            token); None when nothing is configured to fetch a token with.
        access_token: a configured token to use first, or None.
        no_refresh: the error when a token is needed and ``form`` is None.
        parse: keeps extra keys of a token answer in :attr:`Token.extras`.
        on_call: hears the status class of each token request.
        clock: seconds, for ``expires_in``.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        label: str,
        token_url: str,
        form: Mapping[str, str] | None,
        access_token: str | None = None,
        extras: Mapping[str, str] | None = None,
        no_refresh: NoRefresh | None = None,
        parse: ParseAnswer | None = None,
        on_call: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self.label = label
        self._token_url = token_url
        self._form = dict(form) if form is not None else None
        self._no_refresh = no_refresh or self._default_no_refresh
        self._parse = parse
        self._on_call = on_call
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: Token | None = None
        self._known_secrets = {v for k, v in (form or {}).items() if k != "grant_type" and v}
        if access_token:
            self._known_secrets.add(access_token)
            self._token = Token(access_token, 0, None, dict(extras or {}))
        self.refreshes = 0  # token requests that succeeded

    def __repr__(self) -> str:
        generation = self._token.generation if self._token else None
        return (
            f"TokenSource(label={self.label!r}, generation={generation}, "
            f"can_refresh={self.can_refresh})"
        )

    @property
    def can_refresh(self) -> bool:
        """Whether a new token can be requested."""
        return self._form is not None

    @property
    def current(self) -> Token | None:
        """The token held now, without fetching one."""
        return self._token

    def secrets(self) -> tuple[str, ...]:
        """Every secret value known now, for scrubbing messages."""
        return tuple(self._known_secrets)

    def add_secret(self, value: str | None) -> None:
        """Scrub ``value`` from messages too (a configured token the source does not use)."""
        if value:
            self._known_secrets.add(value)

    async def token(self) -> Token:
        """The token to use now: fetched first when none is held or it is about to expire."""
        current = self._token
        if current is not None and not self._expiring(current):
            return current
        return await self.refresh(current)

    async def refresh(self, stale: Token | None) -> Token:
        """A token newer than ``stale``: requested unless another caller already did.

        Raises what ``no_refresh`` gives when no token can be requested,
        ``PermanentError`` when the endpoint refuses the grant, ``RateLimited`` when it
        asks to slow down, ``TransientError`` when it is unreachable or failing.
        """
        async with self._lock:
            current = self._token
            newer = current is not None and (
                stale is None or current.generation != stale.generation
            )
            if newer and current is not None and not self._expiring(current):
                return current
            if self._form is None:
                raise self._no_refresh(stale)
            generation = (current.generation if current else 0) + 1
            self._token = await self._request(generation)
            self.refreshes += 1
            log.info("target_token_refreshed", target=self.label, generation=generation)
            return self._token

    async def call(
        self,
        send: Callable[[Token], Awaitable[httpx.Response]],
        *,
        refused: Callable[[httpx.Response], bool] = lambda r: r.status_code == 401,
        still_refused: Callable[[httpx.Response], UpstreamError] | None = None,
    ) -> httpx.Response:
        """``send`` with the current token; when ``refused`` says the token was, once more
        with a new one. Refused again: ``still_refused``'s error, else ``AuthExpired``
        (retried later, as the SPEC lists expired tokens after one refresh as transient).
        """
        token = await self.token()
        response = await send(token)
        if not refused(response):
            return response
        token = await self.refresh(token)
        response = await send(token)
        if not refused(response):
            return response
        if still_refused is not None:
            raise still_refused(response)
        raise AuthExpired("token_refused", f"{self.label} refused a freshly requested access token")

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced, cut to a readable length."""
        for secret in sorted(self.secrets(), key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text[:_MAX_MESSAGE_CHARS]

    def _expiring(self, token: Token) -> bool:
        return token.expires_at is not None and self._clock() >= token.expires_at

    def _default_no_refresh(self, stale: Token | None) -> UpstreamError:
        if stale is None:
            return PermanentError(
                "NO_CREDENTIALS", f"no {self.label} credentials configured to get a token with"
            )
        return AuthExpired(
            "token_expired", f"the {self.label} access token expired and cannot be refreshed"
        )

    async def _request(self, generation: int) -> Token:
        assert self._form is not None
        response = await counted_request(
            self._http,
            "POST",
            self._token_url,
            label=f"the {self.label} token endpoint",
            on_call=self._on_call,
            data=self._form,
            headers={"Accept": "application/json"},
        )
        body = json_or_none(response)
        body = body if isinstance(body, dict) else {}
        status = response.status_code
        if status == 429:
            raise RateLimited(
                "http_429",
                f"the {self.label} token endpoint asked to slow down",
                retry_after(response),
            )
        if status >= 500 or status == 408:
            raise TransientError(
                f"http_{status}", f"the {self.label} token endpoint answered {status}"
            )
        token = body.get("access_token")
        error, description = _oauth_error(body)
        if status != 200 or (error and not token):
            if description and "too many requests" in description.lower():
                # Zoho's answer to token requests in quick succession.
                raise RateLimited(error or "too_many_requests", self.scrub(description), 60.0)
            raise TokenRefused(
                error or f"http_{status}",
                self.scrub(
                    f"{self.label} refused the token request"
                    + (f": {description}" if description else f" ({status})")
                ),
            )
        if not isinstance(token, str) or not token:
            raise TransientError(
                "bad_token_response", f"the {self.label} token answer had no access_token"
            )
        self._known_secrets.add(token)
        previous = self._token.extras if self._token else {}
        extras = {**previous, **(self._parse(body) if self._parse else {})}
        return Token(token, generation, self._expiry(body.get("expires_in")), extras)

    def _expiry(self, expires_in: Any) -> float | None:
        try:
            seconds = float(expires_in)
        except (TypeError, ValueError):
            return None
        if seconds <= 0:
            return None
        return self._clock() + seconds - min(EARLY_S, seconds / 2)


def _oauth_error(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    error = body.get("error")
    description = body.get("error_description")
    return (
        error if isinstance(error, str) and error else None,
        description if isinstance(description, str) and description else None,
    )
