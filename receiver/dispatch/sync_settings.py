"""The sync settings in force, live on every instance, without a read per event.

:class:`LiveSyncSettings` holds the settings in force in memory and the dispatcher reads
its routing once per dispatch round. A background loop reads only the settings' version
every :data:`POLL_S` (one indexed single-row read per instance per second, on either
backend) and loads the whole row when the version moved, so a change saved anywhere
(another instance, the CLI) applies here within ``POLL_S`` plus one round; a change saved
through this instance applies at once. Saving, with its checks, is :func:`save`, shared
by the admin API, the page and the CLI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from receiver.models import SyncValues
from receiver.ops.logging import get_logger
from receiver.ops.presenters import iso
from receiver.settings import Settings
from receiver.store.base import EventStore
from receiver.sync.rules import RoutingConfig
from receiver.sync.sync_settings import (
    SettingsProblem,
    SyncSettingsInForce,
    changes,
    check,
    in_force,
    routing_for,
    synced_stages,
)

log = get_logger("receiver.dispatch.sync_settings")

#: Seconds between two polls of the settings' version.
POLL_S = 1.0


def configured_values(settings: Settings) -> SyncValues:
    """The starting values: environment and TOML (version 0)."""
    return SyncValues(
        settings.lead_sync,
        settings.contact_sync,
        tuple(settings.lead_stages),
        tuple(settings.contact_stages),
    )


async def read_in_force(store: EventStore, settings: Settings) -> SyncSettingsInForce:
    """The settings in force, read from the database (one read)."""
    return in_force(configured_values(settings), await store.load_sync_settings())


async def stages_in_force(store: EventStore, settings: Settings) -> list[str]:
    """The stages of the syncs that are on in the settings in force (one read): what a
    backfill takes by default and what reconciliation searches."""
    return synced_stages((await read_in_force(store, settings)).values)


def sync_settings_json(current: SyncSettingsInForce) -> dict[str, Any]:
    """The ``GET /admin/sync-settings`` document."""
    v = current.values
    return {
        "lead_sync": v.lead_sync,
        "contact_sync": v.contact_sync,
        "lead_stages": list(v.lead_stages),
        "contact_stages": list(v.contact_stages),
        "source": current.source,
        "version": current.version,
        "updated_at": iso(current.updated_at),
        "updated_by": current.updated_by,
    }


async def status_fields(store: EventStore, settings: Settings) -> dict[str, Any]:
    """``/status``'s stage sets in force and its ``sync_settings`` object, as the database
    has them (a server shows its own copy instead: :func:`status_fields_of`)."""
    return status_fields_of(await read_in_force(store, settings))


def status_fields_of(current: SyncSettingsInForce) -> dict[str, Any]:
    """``/status``'s stage sets and ``sync_settings`` object for ``current``."""
    return {
        "lead_stages": list(current.values.lead_stages),
        "contact_stages": list(current.values.contact_stages),
        "sync_settings": {
            "source": current.source,
            "version": current.version,
            "lead_sync": current.values.lead_sync,
            "contact_sync": current.values.contact_sync,
        },
    }


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What :func:`save` did: the settings now in force, or why it refused."""

    current: SyncSettingsInForce | None
    problems: tuple[SettingsProblem, ...] = ()
    conflict: bool = False
    previous: SyncValues | None = None


async def save(
    store: EventStore,
    settings: Settings,
    values: SyncValues | None,
    expected_version: int,
    by: str,
    now: float,
    catalogue: Collection[str] | None = None,
) -> SaveResult:
    """Check and save ``values`` (None: reset to the configured values).

    ``catalogue`` is the portal's stage ids when they come from HubSpot (an unknown stage
    is then refused), else None.
    """
    configured = configured_values(settings)
    before = await read_in_force(store, settings)
    problems = tuple(check(values, catalogue)) if values is not None else ()
    if problems:
        return SaveResult(None, problems, previous=before.values)
    if expected_version != before.version:
        return SaveResult(None, conflict=True, previous=before.values)
    new_values = values if values is not None else configured
    diff = changes(before.values, new_values)
    if values is None:
        diff = {"reset": True, **diff}
    saved = await store.save_sync_settings(values, expected_version, now, by, diff)
    if saved is None:
        return SaveResult(None, conflict=True, previous=before.values)
    log.info("sync_settings_saved", version=saved.version, by=by, fields=sorted(diff))
    return SaveResult(in_force(configured, saved), previous=before.values)


class LiveSyncSettings:
    """The sync settings in force for this instance; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        base_routing: RoutingConfig,
        poll_s: float = POLL_S,
    ) -> None:
        self.store = store
        self.settings = settings
        self.base_routing = base_routing
        self.poll_s = poll_s
        self._configured = configured_values(settings)
        self._apply(in_force(self._configured, None))

    def _apply(self, current: SyncSettingsInForce) -> None:
        self.current = current
        self._routing = routing_for(self.base_routing, current.values)

    def routing(self) -> RoutingConfig:
        """The routing of the settings in force (read once per dispatch round)."""
        return self._routing

    def use(self, current: SyncSettingsInForce) -> None:
        """Apply settings this instance just saved, without waiting for the poll."""
        if current.version >= self.current.version:
            self._apply(current)

    async def refresh(self) -> bool:
        """Load the settings if their version moved; True when they changed."""
        version = await self.store.sync_settings_version()
        if version == self.current.version:
            return False
        current = in_force(self._configured, await self.store.load_sync_settings())
        self._apply(current)
        log.info("sync_settings_applied", version=current.version, source=current.source)
        return True

    async def run(self, on_change: Callable[[], None] | None = None) -> None:
        """Poll the version until cancelled; ``on_change`` runs after a change applies."""
        while True:
            try:
                if await self.refresh() and on_change is not None:
                    on_change()
            except Exception as exc:  # the database is away: keep the settings in force
                log.warning("sync_settings_poll_failed", error=type(exc).__name__)
            await asyncio.sleep(self.poll_s)
