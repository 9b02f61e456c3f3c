"""Known secret values, found and replaced wherever text might carry them.

Code never writes a secret on purpose, but an upstream may echo one (a proxy or a
misconfigured gateway quoting the request in its error), raw or URL-encoded as it
travelled in a query or a form. The log processor and the dispatcher, which stores
upstream errors as an event's ``last_error`` and history, scrub the same forms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
# Shorter values would match ordinary words.
MIN_SECRET_LENGTH = 4


class SecretScrubber:
    """Replaces each secret, raw or percent-encoded (any hex case), with :data:`REDACTED`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                forms |= {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
        self.forms = sorted(forms, key=len, reverse=True)  # longest first: no partial match
        self._pattern = (
            re.compile("|".join(_form_pattern(f) for f in self.forms)) if self.forms else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        """``value`` with every known secret replaced."""
        if self._pattern is None:
            return value
        return self._pattern.sub(REDACTED, value)

    def optional(self, value: str | None) -> str | None:
        """:meth:`text` for a value that may be None."""
        return None if value is None else self.text(value)


def _form_pattern(form: str) -> str:
    # Percent escapes match whatever the case of their hex digits; the rest exactly.
    parts = re.split(r"(%[0-9A-F]{2})", form)
    return "".join(
        f"%(?i:{re.escape(p[1:])})" if re.fullmatch(r"%[0-9A-F]{2}", p) else re.escape(p)
        for p in parts
    )
