"""Whole numbers read from text a caller sent: headers, query strings, paths, cookies.

``str.isdigit`` then ``int`` is not enough there: ``isdigit`` is true for characters such
as '²' that ``int`` refuses, and ``int`` refuses strings of more than 4,300 digits. Either
way the caller got a 500 instead of the 400 or 404 its input deserved.
"""

from __future__ import annotations

MAX_INT64 = 2**63 - 1  # SQLite's INTEGER and PostgreSQL's bigint
_MAX_INT64_DIGITS = len(str(MAX_INT64))


def parse_uint(text: str, maximum: int = MAX_INT64) -> int | None:
    """``text`` as an integer from 0 to ``maximum``: ASCII digits only, else None."""
    if not (text.isascii() and text.isdigit()):
        return None
    # Past 19 digits only the zeros in front can keep it in range.
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_INT64_DIGITS:
        return None
    value = int(digits)
    return value if value <= maximum else None


def parse_length(text: str) -> int | None:
    """A declared body size: None unless ASCII digits; past 2^63 - 1 it is ``MAX_INT64``.

    A size too large to read is still a size: it must be refused as too large, not
    taken for a missing header and read.
    """
    size = parse_uint(text)
    if size is None and text.isascii() and text.isdigit():
        return MAX_INT64
    return size
