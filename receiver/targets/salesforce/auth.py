"""Salesforce access tokens, on the shared :mod:`receiver.targets.oauth` token source.

What is Salesforce's own: a session is a token *and* the instance it is good for (the
refresh answer's ``instance_url`` may move the org), the refresh-token grant's form, and
the errors when nothing can give a session. Single flight, the generations and the
scrubbing of secrets are the shared component's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from receiver.errors import AuthExpired, PermanentError, UpstreamError
from receiver.targets.oauth import Token
from receiver.targets.oauth import TokenSource as OAuthTokenSource


@dataclass(frozen=True, slots=True)
class Session:
    """An access token, the instance it is good for, and its generation."""

    access_token: str = field(repr=False)
    instance_url: str
    generation: int


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
        self._instance_url = instance_url.rstrip("/") if instance_url else None
        self._has_configured_token = bool(access_token)
        form: dict[str, str] | None = None
        if client_id and refresh_token:
            form = {"grant_type": "refresh_token", "client_id": client_id}
            if client_secret:
                form["client_secret"] = client_secret
            form["refresh_token"] = refresh_token
        # A token without an instance URL is unusable: the first refresh supplies both.
        usable = access_token if self._instance_url else None
        self._source = OAuthTokenSource(
            http=http,
            label="Salesforce",
            token_url=token_url,
            form=form,
            access_token=usable,
            extras={"instance_url": self._instance_url} if self._instance_url else None,
            no_refresh=self._no_refresh_error,
            parse=self._parse,
            on_call=on_call,
        )
        if not usable:
            self._source.add_secret(access_token)

    def __repr__(self) -> str:
        current = self._source.current
        generation = current.generation if current else None
        return (
            f"TokenSource(instance_url={self._instance_url!r}, generation={generation}, "
            f"can_refresh={self.can_refresh})"
        )

    @property
    def can_refresh(self) -> bool:
        """Whether refresh settings are configured (client id and refresh token)."""
        return self._source.can_refresh

    @property
    def refreshes(self) -> int:
        """Token requests that succeeded."""
        return self._source.refreshes

    def secrets(self) -> tuple[str, ...]:
        """Every secret value known now, for scrubbing messages."""
        return self._source.secrets()

    def scrub(self, text: str) -> str:
        """``text`` with every known secret replaced, cut to a readable length."""
        return self._source.scrub(text)

    async def session(self) -> Session:
        """The session to use now; fetches one first when only refresh settings are set."""
        return _session(await self._source.token())

    async def refresh(self, stale: Session | None) -> Session:
        """A session newer than ``stale``: fetched from the token endpoint unless another
        caller already did so while this one waited.

        Raises ``PermanentError`` when nothing could ever give a session (no token, no
        instance URL, a refresh token Salesforce refuses), ``AuthExpired`` when a
        configured token expired with no refresh settings (retried: a new token and a
        restart let the events through), ``TransientError`` when the endpoint is
        unreachable or failing.
        """
        old = Token(stale.access_token, stale.generation) if stale is not None else None
        return _session(await self._source.refresh(old))

    def _parse(self, body: Mapping[str, Any]) -> dict[str, str]:
        instance = body.get("instance_url")
        if isinstance(instance, str) and instance:
            self._instance_url = instance.rstrip("/")
        if self._instance_url is None:
            raise PermanentError(
                "NO_INSTANCE_URL",
                "no Salesforce instance URL configured, and the token answer carried none",
            )
        return {"instance_url": self._instance_url}

    def _no_refresh_error(self, stale: Token | None) -> UpstreamError:
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


def _session(token: Token) -> Session:
    return Session(token.access_token, token.extras["instance_url"], token.generation)
