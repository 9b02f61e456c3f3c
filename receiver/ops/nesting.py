"""How deeply a JSON document nests, checked without recursion, and cut to a bound.

HubSpot's events are flat. An event nested deeper than :data:`MAX_EVENT_DEPTH` is stored
as invalid, cut to that depth; readers cut whatever an older version stored the same
way, so no answer ever fails on a document its JSON writer cannot nest that deeply.
"""

from __future__ import annotations

from typing import Any

#: Containers on the deepest path of an event, the event object itself included.
MAX_EVENT_DEPTH = 32
CUT = "[nested too deeply]"


def deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests more than ``limit`` dicts or lists on some path."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def cut_to(value: Any, limit: int) -> Any:
    """``value`` with every dict or list below ``limit`` levels replaced by :data:`CUT`."""
    if type(value) is not dict and type(value) is not list:
        return value
    if limit <= 0:
        return CUT
    if type(value) is dict:
        return {k: cut_to(v, limit - 1) for k, v in value.items()}
    return [cut_to(v, limit - 1) for v in value]
