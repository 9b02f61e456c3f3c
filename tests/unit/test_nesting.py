"""Depth checks without recursion, and cutting a document to a depth."""

from __future__ import annotations

from typing import Any

from receiver.ops.nesting import CUT, cut_to, deeper_than


def chain(levels: int, leaf: Any = 1) -> Any:
    doc: Any = leaf
    for _ in range(levels):
        doc = {"k": doc}
    return doc


def test_depth_counts_every_object_and_array_on_the_deepest_path() -> None:
    assert not deeper_than(1, 0)
    assert deeper_than({}, 0) and not deeper_than({}, 1)
    assert deeper_than({"a": 1, "b": [[]]}, 2) and not deeper_than({"a": 1, "b": [[]]}, 3)
    assert deeper_than(chain(32), 31) and not deeper_than(chain(32), 32)


def test_far_past_the_recursion_limit_is_measured_without_recursing() -> None:
    assert deeper_than(chain(50_000), 32)


def test_cutting_keeps_the_shallow_levels_and_marks_what_was_cut() -> None:
    doc = {"objectId": 5, "deep": chain(40), "flat": [1, 2]}
    cut = cut_to(doc, 4)
    assert cut["objectId"] == 5 and cut["flat"] == [1, 2]
    assert cut["deep"] == {"k": {"k": {"k": CUT}}}
    assert not deeper_than(cut, 4)
    assert cut_to(doc, 100) == doc
