"""Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``).

The signature is the ``standardwebhooks`` package's own: HMAC-SHA256 over
``{id}.{timestamp}.{body}`` with the secret's bytes, sent as ``v1,<base64>``. The
package's published test vector is checked in the unit tests, so a change there fails
loudly rather than signing what no receiver can verify.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
#: The specification's bounds on the secret's length, in bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def check_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; ``ValueError`` (never echoing it) when not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("must start with 'whsec_' (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be 'whsec_' followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes after 'whsec_',"
            f" not {len(key)}"
        )
    return key


class Signer:
    """Signs webhook bodies; ``repr`` hides the secret."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def __repr__(self) -> str:
        return "Signer()"

    def headers(self, message_id: str, body: bytes, now: float) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body`` sent at ``now`` (unix seconds)."""
        when = datetime.fromtimestamp(int(now), tz=UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": self._webhook.sign(message_id, when, body),
        }
