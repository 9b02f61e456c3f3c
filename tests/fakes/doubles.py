"""Small in-memory fakes for unit tests of the dispatcher.

:class:`InMemoryStore` follows the :class:`~receiver.store.base.EventStore` protocol
with the semantics the dispatcher relies on: due events, per-contact leases that only
``record`` (or time) releases, outcomes that count attempts and write history, and
contact sync state. :class:`ScriptedTarget` is a
:class:`~receiver.targets.base.Target` whose answers are scripted: whole-call errors,
per-record errors, a gate that holds calls, and counters of what it was asked.

Neither is used by the service itself; integration tests use the real SQLite store.
They live in :mod:`tests.fakes.memory_store` and :mod:`tests.fakes.scripted_target`; import
them from here.
"""

from __future__ import annotations

from tests.fakes.memory_store import InMemoryStore
from tests.fakes.scripted_target import ScriptedTarget, permanent, rate_limited, transient

__all__ = ["InMemoryStore", "ScriptedTarget", "permanent", "rate_limited", "transient"]
