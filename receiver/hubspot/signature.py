"""HubSpot webhook signature verification (v1, v2, v3) and matching signers.

Pure functions: no I/O and no clock reads (the caller passes ``now_ms``), so the
request path stays cheap and the module is trivially testable.

Decisions, following developers.hubspot.com/docs/api/webhooks/validating-requests:

- **v3 is preferred.** When ``x-hubspot-signature-v3`` is present, only v3 is checked
  (no fallback to v1/v2 if it fails). It then also needs ``x-hubspot-request-timestamp``.
  The signed string is ``method + uri + body + timestamp`` (UTF-8, the timestamp exactly
  as sent), HMAC-SHA256 keyed by the client secret, base64-encoded.
- **v3 URI decoding.** Only the escapes HubSpot lists (``%3A %2F %3F %40 %21 %24 %27
  %28 %29 %2A %2C %3B``, hex in either case) are decoded, in a single pass, so
  ``%20`` or ``%252F`` stay as they are. The regex only runs when the URI has a ``%``.
  v1 and v2 never decode: the v2 docs require the URI to match the request exactly.
- **v3 timestamp.** ASCII digits only (``"1.5e12"``, ``"792.0"``, ``"-1"`` are refused;
  floats broke other verifiers' signed strings), and it must be within ``max_age_s`` of
  ``now_ms`` in either direction, so future-dated requests cannot be pre-recorded.
- **v1/v2.** Picked by ``x-hubspot-signature-version``. When that header is missing the
  request is checked as v1: the docs say webhooks API requests are sent with version
  ``v1``, and the official SDK has no "unknown" case. This weakens nothing, since a
  sender could just as well send ``v1`` explicitly. Any other version is refused. Hex
  digests are compared case-insensitively.
- **Errors.** Every failure raises :class:`SignatureError` with a short message that
  never contains the secret, the expected signature or the received one.
- **Comparison** is constant-time (:func:`hmac.compare_digest`) on ASCII bytes.
- **HMAC from precomputed pads.** ``hmac.digest`` looks SHA-256 up in OpenSSL and
  hashes the key's two pads on every call (1.8 us for a one-event body, against 0.9 us
  here). v3 keeps the two hashes with the client secret's pads absorbed (a few secrets,
  cached) and copies them per request: RFC 2104 exactly, checked against
  ``hmac.digest`` in the tests.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from receiver.errors import SignatureError

__all__ = ["hmac_sha256", "sign_v1", "sign_v2", "sign_v3", "verify"]

HEADER_SIGNATURE = "x-hubspot-signature"
HEADER_VERSION = "x-hubspot-signature-version"
HEADER_SIGNATURE_V3 = "x-hubspot-signature-v3"
HEADER_TIMESTAMP = "x-hubspot-request-timestamp"

_V3_ESCAPES = {
    "3A": ":",
    "2F": "/",
    "3F": "?",
    "40": "@",
    "21": "!",
    "24": "$",
    "27": "'",
    "28": "(",
    "29": ")",
    "2A": "*",
    "2C": ",",
    "3B": ";",
}
_V3_ESCAPE_RE = re.compile("%(" + "|".join(_V3_ESCAPES) + ")", re.IGNORECASE)
# Longer than any plausible ms timestamp; bounds the int() conversion of hostile input.
_MAX_TIMESTAMP_DIGITS = 16


def _decode_v3_uri(uri: str) -> str:
    if "%" not in uri:
        return uri
    return _V3_ESCAPE_RE.sub(lambda m: _V3_ESCAPES[m.group(1).upper()], uri)


_BLOCK = 64  # SHA-256's block size in bytes
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=4)
def _pads(secret: str) -> tuple[Any, Any]:
    key = secret.encode()
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def hmac_sha256(secret: str, message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` keyed by ``secret`` (UTF-8), as ``hmac.digest`` gives it."""
    inner, outer = _pads(secret)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def _v3_digest(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> bytes:
    message = b"".join((method.encode(), _decode_v3_uri(uri).encode(), body, timestamp.encode()))
    return base64.b64encode(hmac_sha256(secret, message))


def _v1_hex(secret: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + body).hexdigest()


def _v2_hex(secret: str, method: str, uri: str, body: bytes) -> str:
    return hashlib.sha256(
        b"".join((secret.encode(), method.encode(), uri.encode(), body))
    ).hexdigest()


def _matches(expected: bytes, provided: str, *, fold_case: bool = False) -> bool:
    # compare_digest refuses non-ASCII str, and such a header can never match anyway.
    if not provided.isascii():
        return False
    return hmac.compare_digest(expected, (provided.lower() if fold_case else provided).encode())


def sign_v1(secret: str, body: bytes) -> str:
    """Returns the v1 signature: hex SHA-256 of ``secret + body``."""
    return _v1_hex(secret, body)


def sign_v2(secret: str, method: str, url: str, body: bytes) -> str:
    """Returns the v2 signature: hex SHA-256 of ``secret + method + url + body``."""
    return _v2_hex(secret, method, url, body)


def sign_v3(secret: str, method: str, url: str, body: bytes, timestamp_ms: int) -> str:
    """Returns the v3 signature for the ``x-hubspot-signature-v3`` header.

    Args:
        secret: The app's client secret (the HMAC key).
        method: The HTTP method, e.g. ``"POST"``.
        url: The full URL HubSpot calls; the listed escapes are decoded as in :func:`verify`.
        body: The raw request body.
        timestamp_ms: The value sent as ``x-hubspot-request-timestamp``.
    """
    return _v3_digest(secret, method, url, body, str(timestamp_ms)).decode("ascii")


def verify(
    *,
    secret: str,
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    now_ms: int,
    max_age_s: int,
) -> None:
    """Checks a HubSpot webhook request's signature, or raises.

    Args:
        secret: The app's client secret.
        method: The request's HTTP method.
        url: The exact URL HubSpot called (the configured public URL behind a proxy).
        body: The raw request body, unparsed.
        headers: Request headers with lower-case keys.
        now_ms: The current time in ms since the epoch.
        max_age_s: The largest accepted distance between the v3 timestamp and now.

    Raises:
        SignatureError: The signature is missing, malformed or wrong, the v1/v2 version is
            unknown, or the v3 timestamp is missing, not an integer or out of range.
    """
    signature_v3 = headers.get(HEADER_SIGNATURE_V3)
    if signature_v3:
        timestamp = headers.get(HEADER_TIMESTAMP)
        if not timestamp:
            raise SignatureError("missing X-HubSpot-Request-Timestamp header")
        if not (
            timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS
        ):
            raise SignatureError("X-HubSpot-Request-Timestamp is not an integer of milliseconds")
        if abs(now_ms - int(timestamp)) > max_age_s * 1000:
            raise SignatureError("request timestamp is outside the accepted window")
        if not _matches(_v3_digest(secret, method, url, body, timestamp), signature_v3):
            raise SignatureError("invalid X-HubSpot-Signature-v3")
        return

    signature = headers.get(HEADER_SIGNATURE)
    if not signature:
        raise SignatureError("missing HubSpot signature header")
    version = headers.get(HEADER_VERSION, "v1").strip().lower() or "v1"
    if version == "v1":
        expected = _v1_hex(secret, body)
    elif version == "v2":
        expected = _v2_hex(secret, method, url, body)
    else:
        raise SignatureError("unsupported X-HubSpot-Signature-Version")
    if not _matches(expected.encode(), signature, fold_case=True):
        raise SignatureError(f"invalid X-HubSpot-Signature ({version})")
