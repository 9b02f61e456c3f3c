"""The pure sync settings rules, the live holder on the in-memory store, and the
dispatcher taking the routing in force once per round."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from receiver.dispatch.sync_settings import LiveSyncSettings, save
from receiver.errors import AuthExpired
from receiver.jobs.backfill import BackfillRefused, backfill_stages
from receiver.models import SavedSyncSettings, SyncValues
from receiver.sync.rules import RoutingConfig, decide
from receiver.sync.sync_settings import (
    added_stages,
    changes,
    check,
    holder_of,
    in_force,
    synced_stages,
)
from tests.conftest import build_settings
from tests.fakes.doubles import InMemoryStore, ScriptedTarget, permanent
from tests.unit.test_dispatcher import running, stage_event

VALUES = SyncValues(True, True, ("lead", "marketingqualifiedlead"), ("customer",))


def test_an_overlap_names_each_stage_in_both_sets() -> None:
    values = replace(VALUES, contact_stages=("customer", "lead", "marketingqualifiedlead"))
    problems = check(values, None)
    assert [(p.code, p.stage) for p in problems] == [
        ("stages_overlap", "lead"),
        ("stages_overlap", "marketingqualifiedlead"),
    ]
    assert "'lead'" in problems[0].message


def test_an_unknown_stage_is_refused_only_against_the_portals_catalogue() -> None:
    values = replace(VALUES, lead_stages=("lead", "9001"))
    assert check(values, None) == []
    (problem,) = check(values, ["lead", "customer"])
    assert (problem.code, problem.stage) == ("unknown_stage", "9001")


def test_changes_list_only_what_differs_as_json() -> None:
    new = replace(VALUES, lead_sync=False, contact_stages=("customer", "evangelist"))
    assert changes(VALUES, new) == {
        "lead_sync": {"from": True, "to": False},
        "contact_stages": {"from": ["customer"], "to": ["customer", "evangelist"]},
    }
    assert changes(VALUES, VALUES) == {}


def test_added_stages_are_those_newly_synced_by_a_sync_that_is_on() -> None:
    new = replace(VALUES, lead_stages=("lead", "subscriber"), contact_stages=("customer", "x"))
    assert added_stages(VALUES, new) == ["subscriber", "x"]
    switched_on = replace(VALUES, contact_sync=False)
    assert added_stages(switched_on, VALUES) == ["customer"]
    assert added_stages(VALUES, replace(new, lead_sync=False)) == ["x"]


def test_in_force_is_the_saved_copy_or_the_configured_values_after_a_reset() -> None:
    configured = replace(VALUES, lead_stages=("lead",))
    assert in_force(configured, None).source == "config"
    saved = in_force(configured, SavedSyncSettings(3, VALUES, 10.0, "abcd1234"))
    assert (saved.source, saved.version, saved.values) == ("database", 3, VALUES)
    reset = in_force(configured, SavedSyncSettings(4, None, 11.0, "cli"))
    assert (reset.source, reset.version, reset.values) == ("config", 4, configured)
    assert holder_of("customer", VALUES) == "contact" and holder_of("other", VALUES) is None


def test_a_stage_of_a_sync_turned_off_is_skipped_with_sync_off() -> None:
    config = RoutingConfig(frozenset({"lead"}), frozenset({"customer"}), lead_sync=False)
    assert decide("lead", None, config).reason == "sync-off"
    assert decide("lead", "contact", config).reason == "sync-off"
    assert decide("customer", None, config).kind == "contact"
    off = replace(config, lead_sync=True, contact_sync=False)
    assert decide("customer", "lead", off).reason == "sync-off"
    assert decide("other", None, off).reason == "stage-not-synced"


class CountingStore(InMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.version_reads = 0
        self.loads = 0

    async def sync_settings_version(self) -> int:
        self.version_reads += 1
        return await super().sync_settings_version()

    async def load_sync_settings(self) -> Any:
        self.loads += 1
        return await super().load_sync_settings()


async def test_the_holder_loads_the_row_only_when_the_version_moved(tmp_path: Path) -> None:
    settings = build_settings(tmp_path)
    store = CountingStore()
    live = LiveSyncSettings(store, settings, RoutingConfig(frozenset(), frozenset()))
    assert live.routing().lead_stages == frozenset(settings.lead_stages)
    assert not await live.refresh() and store.loads == 0
    values = SyncValues(False, True, ("lead",), ("customer",))
    result = await save(store, settings, values, 0, "cli", 1.0)
    assert result.current is not None and result.current.version == 1
    loads = store.loads
    assert await live.refresh() and store.loads == loads + 1
    assert not await live.refresh() and store.loads == loads + 1
    routing = live.routing()
    assert (routing.lead_sync, routing.lead_stages) == (False, frozenset({"lead"}))
    stale = await save(store, settings, values, 0, "cli", 2.0)
    assert stale.conflict and stale.current is None


async def test_the_dispatcher_takes_the_routing_in_force_at_each_round() -> None:
    routing: dict[str, RoutingConfig] = {}

    def live() -> RoutingConfig:
        return routing["now"]

    async with running(live_routing=live) as rig:
        routing["now"] = replace(rig.dispatcher.routing, lead_sync=False)
        (first,) = await rig.send(stage_event(1, "lead"))
        assert (await rig.final(first))[0].reason == "sync-off"
        routing["now"] = rig.dispatcher.routing
        (second,) = await rig.send(stage_event(2, "lead"))
        assert (await rig.final(second))[0].state == "synced"
        assert rig.target.kinds(2) == {"lead"} and rig.target.kinds(1) == set()


class Observer:
    def __init__(self) -> None:
        self.failures: list[tuple[int, str | None]] = []
        self.refused: list[tuple[str, str]] = []

    def failed(self, events: Any) -> None:
        self.failures.extend(events)

    def token_refused(self, api: str, code: str) -> None:
        self.refused.append((api, code))


async def test_the_dispatcher_tells_the_alerts_of_failures_and_refused_tokens() -> None:
    target = ScriptedTarget()
    target.fail_calls(AuthExpired("INVALID_SESSION_ID", "expired"))
    target.fail_record(2, permanent("INVALID_EMAIL_ADDRESS", "Email: x@y"))
    observer = Observer()
    async with running(target=target, alerts=observer) as rig:
        (first,) = await rig.send(stage_event(1, "lead"))
        assert (await rig.final(first, states=("retrying",)))[0].state == "retrying"
        (second,) = await rig.send(stage_event(2, "lead"))
        await rig.final(second)
    assert observer.refused == [("target", "INVALID_SESSION_ID")]
    assert observer.failures == [(second, "INVALID_EMAIL_ADDRESS")]


def test_synced_stages_are_those_of_the_syncs_that_are_on_lead_stages_first() -> None:
    values = SyncValues(True, True, ("lead", "subscriber"), ("customer", "lead"))
    assert synced_stages(values) == ["lead", "subscriber", "customer"]
    assert synced_stages(replace(values, lead_sync=False)) == ["customer", "lead"]
    assert synced_stages(replace(values, lead_sync=False, contact_sync=False)) == []


def test_a_backfill_with_no_sync_on_is_refused_and_only_synced_stages_are_taken() -> None:
    with pytest.raises(BackfillRefused) as nothing:
        backfill_stages([], None)
    assert nothing.value.code == "nothing_synced"
    assert backfill_stages(["lead", "customer"], None) == ["lead", "customer"]
    assert backfill_stages(["lead", "customer"], ["customer", "customer"]) == ["customer"]
    with pytest.raises(BackfillRefused) as other:
        backfill_stages(["lead"], ["customer"])
    assert (other.value.status, other.value.code) == (400, "stage_not_synced")
