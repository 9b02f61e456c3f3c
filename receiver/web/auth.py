"""Admin authentication: the bearer token, the page's session cookie, and CSRF checks.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, so neither the
token's content nor its length leaks through timing. The page's cookie never holds the
token: it holds an expiry time, a random session id and an HMAC of both keyed by the
token. The database remembers each session id (as its SHA-256) until its logout, and
the page checks it on every request, so a leaked cookie stops working at the logout, at
its expiry, or when the token is changed. Audit lines name the caller by
:func:`fingerprint`, the first 8 hex digits of the token's SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from receiver.settings import Settings
from receiver.web.numbers import parse_uint
from receiver.web.responses import error

COOKIE_NAME = "stagesync_admin"
SESSION_S = 12 * 3600
_SESSION_LABEL = b"stagesync-admin-session-v2"
NO_TOKEN_MESSAGE = (
    "The admin API is off because no admin token is configured. Set STAGESYNC_ADMIN_TOKEN"
    " to a long random value (for example the output of `openssl rand -hex 32`) and restart."
)
BAD_TOKEN_MESSAGE = "Send the admin token as 'Authorization: Bearer <STAGESYNC_ADMIN_TOKEN>'."


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made an authenticated admin request, for the audit log."""

    fingerprint: str
    via: str  # "bearer" or "cookie"
    session: str | None = None  # the cookie's session id


def fingerprint(token: str) -> str:
    """A short, non-secret name for a token: 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def admin_token(settings: Settings) -> str | None:
    """The configured admin token, or None when the admin endpoints are off."""
    token = settings.admin_token
    value = token.get_secret_value() if token else ""
    return value or None


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (digests first, so lengths do not leak either)."""
    a = hashlib.sha256(given.encode()).digest()
    b = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(a, b)


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@dataclass(frozen=True, slots=True)
class Session:
    """A page login: the cookie's value, and the key the database remembers it by."""

    cookie: str
    key: str
    expires_at: float


def session_key(session_id: str) -> str:
    """What the database holds for a session id: its SHA-256, never the id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def _session_mac(token: str, expires: int, session_id: str) -> str:
    msg = _SESSION_LABEL + b":" + str(expires).encode() + b":" + session_id.encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def issue_session(token: str, now: float) -> Session:
    """A new session valid for :data:`SESSION_S` seconds; its cookie does not hold the token."""
    expires = int(now) + SESSION_S
    session_id = secrets.token_urlsafe(18)
    mac = _session_mac(token, expires, session_id)
    return Session(f"{expires}.{session_id}.{mac}", session_key(session_id), float(expires))


def session_of(token: str, value: str, now: float) -> str | None:
    """The database key of the session ``value`` names, when it was issued for ``token``
    and has not expired; else None. Whether it was logged out is the database's to say."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    stamp, session_id, mac = parts
    expires = parse_uint(stamp)
    if expires is None or not session_id or not mac:
        return None
    good = hmac.compare_digest(_session_mac(token, expires, session_id).encode(), mac.encode())
    return session_key(session_id) if good and now < expires else None


def authenticate(
    request: Request, settings: Settings, now: float, *, allow_cookie: bool
) -> Caller | Response:
    """The caller, or the error answer: 403 when no token is configured, else 401."""
    token = admin_token(settings)
    if token is None:
        return error(403, "admin_disabled", NO_TOKEN_MESSAGE)
    given = bearer_token(request)
    if given is not None:
        if token_matches(given, token):
            return Caller(fingerprint(token), "bearer")
    elif allow_cookie:
        cookie = request.cookies.get(COOKIE_NAME)
        session = session_of(token, cookie, now) if cookie else None
        if session is not None:
            return Caller(fingerprint(token), "cookie", session)
    return error(401, "unauthorized", BAD_TOKEN_MESSAGE, {"WWW-Authenticate": "Bearer"})


def _first(request: Request, header: str) -> str:
    return request.headers.get(header, "").split(",")[0].strip().lower()


def same_origin(request: Request) -> bool:
    """CSRF check for the page's form posts: ``Origin`` (or ``Referer``) names this
    scheme and host.

    Browsers send ``Origin`` on every form POST; the cookie is also ``SameSite=Strict``,
    so this is a second wall. A post with neither header is refused. The host may be the
    ``Host`` header or, behind a proxy that rewrites it, ``X-Forwarded-Host``, and the
    scheme the request's or the proxy's ``X-Forwarded-Proto``: a page on another site
    cannot set any of them on a browser's request. The scheme counts because a page
    served over plain HTTP on the same host (another port's service, or a network
    attacker's answer) is not this origin.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    origin = parts.netloc.lower()
    hosts = {_first(request, "host"), _first(request, "x-forwarded-host")} - {""}
    schemes = {request.url.scheme, _first(request, "x-forwarded-proto")} - {""}
    return bool(origin) and origin in hosts and parts.scheme.lower() in schemes
