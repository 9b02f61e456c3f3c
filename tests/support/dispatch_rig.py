"""A dispatcher on the in-memory store and a scripted target, with a clock the tests move.

Time that matters to the dispatcher (leases, next attempts) is the fake clock; only the
claim loop's own waits are real, and the tests wake it instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from receiver.dispatch.dispatcher import Dispatcher
from receiver.hubspot.payload import to_new_events
from receiver.models import StoredEvent
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.sync.mapping import hubspot_properties
from receiver.sync.retry import RetryPolicy
from receiver.sync.rules import RoutingConfig
from tests.fakes.doubles import InMemoryStore, ScriptedTarget
from tests.support.webhooks import event

FINAL = ("synced", "skipped", "failed")
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Reader:
    """A ContactReader over a dict, with scripted errors and a call log."""

    def __init__(self, contacts: dict[int, dict[str, str | None]]) -> None:
        self.contacts = contacts
        self.calls: list[list[int]] = []
        self.errors: list[BaseException] = []

    async def batch_read(
        self, ids: Sequence[int], properties: Sequence[str], now: float
    ) -> dict[int, dict[str, str | None]]:
        self.calls.append(list(ids))
        if self.errors:
            raise self.errors.pop(0)
        return {i: dict(self.contacts[i]) for i in ids if i in self.contacts}


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.clock = Clock()
        self.store = InMemoryStore()
        self.target: ScriptedTarget = kw.pop("target", None) or ScriptedTarget()
        on_delete = kw.pop("on_delete", "ignore")
        promotion = kw.pop("promotion", "create-contact")
        mappings = {k: self.target.default_mapping(k) for k in ("lead", "contact")}
        self.dispatcher = Dispatcher(
            store=self.store,
            target=self.target,
            hubspot=kw.pop("hubspot", None),
            routing=RoutingConfig(  # as receiver.web.app builds it
                frozenset(DEFAULT_LEAD_STAGES),
                frozenset(DEFAULT_CONTACT_STAGES),
                on_delete,
                frozenset(hubspot_properties(*mappings.values())),
                promotion,
            ),
            retry=kw.pop("retry", RetryPolicy(base_s=5, max_s=60, max_attempts=10)),
            mappings=mappings,
            clock=self.clock,
            **kw,
        )
        self.store.add_commit_listener(self.dispatcher.wake)

    async def send(self, *events: dict[str, Any]) -> list[int]:
        before = set(self.store.rows)
        await self.store.ingest(to_new_events(list(events)), self.clock())
        return sorted(set(self.store.rows) - before)

    async def get(self, event_id: int) -> StoredEvent:
        found = await self.store.get_event(event_id)
        assert found is not None
        return found

    async def until(
        self, check: Callable[[], Any], within: float = 3.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + within
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def final(
        self, *ids: int, states: Sequence[str] = FINAL, within: float = 3.0
    ) -> list[StoredEvent]:
        async def done() -> bool:
            return all([(await self.get(i)).state in states for i in ids])

        await self.until(done, within=within, what=f"events {ids} in {states}")
        return [await self.get(i) for i in ids]

    async def retry_now(self, event_id: int) -> None:
        """Move the clock to the event's next attempt and wake the dispatcher."""
        self.clock.t = max(self.clock.t, self.store.next_attempt_at(event_id)) + 0.001
        self.dispatcher.wake()


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[Rig]:
    rig = Rig(**kw)
    rig.dispatcher.start()
    try:
        yield rig
    finally:
        await rig.dispatcher.stop()


def stage_event(object_id: int, stage: str, at: int = 1_000, **kw: Any) -> dict[str, Any]:
    return event(object_id, stage, occurred_at=at, **kw)
