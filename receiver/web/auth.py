"""Admin authentication: the bearer token, the page's session cookie, and CSRF checks.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, so neither the
token's content nor its length leaks through timing. The page's cookie never holds the
token: it holds an expiry time and an HMAC of it keyed by the token, so a leaked cookie
stops working when it expires or when the token is changed. Audit lines name the caller
by :func:`fingerprint`, the first 8 hex digits of the token's SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from receiver.settings import Settings
from receiver.web.numbers import parse_uint
from receiver.web.responses import error

COOKIE_NAME = "stagesync_admin"
SESSION_S = 12 * 3600
_SESSION_LABEL = b"stagesync-admin-session-v1"
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


def _session_mac(token: str, expires: int) -> str:
    msg = _SESSION_LABEL + b":" + str(expires).encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def issue_session(token: str, now: float) -> str:
    """A cookie value valid for :data:`SESSION_S` seconds; it does not contain the token."""
    expires = int(now) + SESSION_S
    return f"{expires}.{_session_mac(token, expires)}"


def session_valid(token: str, value: str, now: float) -> bool:
    """True when ``value`` was issued for ``token`` and has not expired."""
    stamp, _, mac = value.partition(".")
    expires = parse_uint(stamp)
    if expires is None or not mac:
        return False
    good = hmac.compare_digest(_session_mac(token, expires).encode(), mac.encode())
    return good and now < expires


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
        if cookie and session_valid(token, cookie, now):
            return Caller(fingerprint(token), "cookie")
    return error(401, "unauthorized", BAD_TOKEN_MESSAGE, {"WWW-Authenticate": "Bearer"})


def same_origin(request: Request) -> bool:
    """CSRF check for the page's form posts: ``Origin`` (or ``Referer``) names this host.

    Browsers send ``Origin`` on every form POST; the cookie is also ``SameSite=Strict``,
    so this is a second wall. A post with neither header is refused. The host may be the
    ``Host`` header or, behind a proxy that rewrites it, ``X-Forwarded-Host``: a page on
    another site cannot set either on a browser's request.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    origin = urlsplit(source).netloc.lower()
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0]
    hosts = {h.strip().lower() for h in (request.headers.get("host", ""), forwarded)}
    return bool(origin) and origin in hosts - {""}
