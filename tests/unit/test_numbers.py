"""Whole numbers from caller text: ASCII digits in range, or None, never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.web.numbers import MAX_INT64, parse_length, parse_uint


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("42", 42), ("007", 7), (str(MAX_INT64), MAX_INT64), ("0" * 40 + "5", 5)],
)
def test_ascii_digits_in_range_are_read(text: str, expected: int) -> None:
    assert parse_uint(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "-1", "+1", " 1", "1.0", "1e3", "\u00b2", "\u0661", "abc", str(MAX_INT64 + 1), "9" * 5000],
)
def test_anything_else_is_none(text: str) -> None:
    assert parse_uint(text) is None


def test_a_maximum_below_int64_is_enforced() -> None:
    assert parse_uint("500", 500) == 500
    assert parse_uint("501", 500) is None


@given(st.text(max_size=30))
def test_any_text_gives_a_number_in_range_or_none(text: str) -> None:
    value = parse_uint(text)
    assert value is None or (0 <= value <= MAX_INT64 and int(text) == value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("65536", 65536), ("9" * 19, MAX_INT64), ("9" * 5000, MAX_INT64), ("\u00b2", None)],
)
def test_a_declared_length_too_large_to_hold_is_still_too_large(
    text: str, expected: int | None
) -> None:
    assert parse_length(text) == expected
