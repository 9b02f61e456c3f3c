"""What the command line reads and writes the same way in every command: dates, bounded
whole numbers (as the admin API bounds them), and JSON, one document per line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson

from receiver.web.admin.params import MAX_LIMIT, BadParam, parse_time
from receiver.web.numbers import MAX_INT64, parse_uint


def when(value: str) -> float:
    """An ISO date or date-time (UTC when no offset is given) as unix seconds."""
    try:
        return parse_time(value, value)
    except BadParam as exc:  # "'<value>' must be ...": argparse names the option
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from ``low`` to ``high``, in ASCII digits."""

    def parse(text: str) -> int:
        value = parse_uint(text, high)  # ASCII digits only: int() fails on '²'
        if value is None or value < low:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {text!r}"
            )
        return value

    return parse


event_id = whole_number(1, MAX_INT64)
object_id = whole_number(0, MAX_INT64)  # as the admin API's object_id filter
limit = whole_number(1, MAX_LIMIT)
# Port 0 would listen on a port chosen by the system that nothing reports.
port = whole_number(1, 65535)


def print_json(doc: Any) -> None:
    """``doc`` as one line of JSON on standard output."""
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
