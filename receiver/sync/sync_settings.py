"""Sync settings: which syncs are on, which stages each takes, and the rules they obey.

Pure: the values in force, the checks a change must pass and the history's ``changes``
are computed here; the store keeps them and the admin API, the page and the CLI show
them. The configured values (environment or TOML) are version 0; the saved copy in the
database, once there is one, is in force on every instance until it is reset.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from receiver.models import SavedSyncSettings, SyncValues
from receiver.sync.rules import RoutingConfig

Source = Literal["config", "database"]
SYNC_NAMES = {"lead": "Lead sync", "contact": "Contact sync"}

#: HubSpot's default lifecycle stages, in their order, with their labels.
DEFAULT_STAGES: tuple[tuple[str, str], ...] = (
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
)


@dataclass(frozen=True, slots=True)
class SyncSettingsInForce:
    """The sync settings every dispatch uses, with where they come from."""

    values: SyncValues
    source: Source
    version: int
    updated_at: float | None
    updated_by: str | None


@dataclass(frozen=True, slots=True)
class SettingsProblem:
    """Why a change is refused: ``code`` is the API's error code."""

    code: Literal["stages_overlap", "unknown_stage"]
    stage: str
    message: str


def in_force(configured: SyncValues, saved: SavedSyncSettings | None) -> SyncSettingsInForce:
    """The saved copy when there is one, else the configured values."""
    if saved is None:
        return SyncSettingsInForce(configured, "config", 0, None, None)
    if saved.values is None:  # reset: the configured values, under the reset's version
        return SyncSettingsInForce(
            configured, "config", saved.version, saved.updated_at, saved.updated_by
        )
    return SyncSettingsInForce(
        saved.values, "database", saved.version, saved.updated_at, saved.updated_by
    )


def routing_for(base: RoutingConfig, values: SyncValues) -> RoutingConfig:
    """``base`` (deletion policy, synced properties) with these stage sets and switches."""
    return replace(
        base,
        lead_stages=frozenset(values.lead_stages),
        contact_stages=frozenset(values.contact_stages),
        lead_sync=values.lead_sync,
        contact_sync=values.contact_sync,
    )


def clean_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """Stage ids stripped, blanks dropped, duplicates removed, order kept."""
    return tuple(dict.fromkeys(s.strip() for s in stages if s.strip()))


def check(values: SyncValues, catalogue: Collection[str] | None) -> list[SettingsProblem]:
    """Every reason to refuse ``values``; ``catalogue`` is the portal's stage ids, or None
    when the catalogue is not HubSpot's own (any stage id is then accepted)."""
    problems = []
    for stage in sorted(set(values.lead_stages) & set(values.contact_stages)):
        problems.append(
            SettingsProblem(
                "stages_overlap",
                stage,
                f"Stage '{stage}' is picked for both lead sync and contact sync;"
                " a stage syncs as a Lead or as a Contact, not both.",
            )
        )
    if catalogue is not None:
        known = set(catalogue)
        for stage in dict.fromkeys((*values.lead_stages, *values.contact_stages)):
            if stage not in known:
                problems.append(
                    SettingsProblem(
                        "unknown_stage",
                        stage,
                        f"Stage '{stage}' is not a lifecycle stage of this HubSpot portal.",
                    )
                )
    return problems


def changes(old: SyncValues, new: SyncValues) -> dict[str, Any]:
    """What differs, as ``{"field": {"from": ..., "to": ...}}``, for the history."""
    out: dict[str, Any] = {}
    for name in ("lead_sync", "contact_sync", "lead_stages", "contact_stages"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            as_json = list if isinstance(before, tuple) else bool
            out[name] = {"from": as_json(before), "to": as_json(after)}
    return out


def synced_stages(values: SyncValues) -> list[str]:
    """Every stage of the syncs that are on: the lead stages, then the contact stages."""
    return list(
        dict.fromkeys(
            [
                *(values.lead_stages if values.lead_sync else ()),
                *(values.contact_stages if values.contact_sync else ()),
            ]
        )
    )


def added_stages(old: SyncValues, new: SyncValues) -> list[str]:
    """Stages a change newly brings into a sync that is on (what a backfill would catch)."""
    before = set(synced_stages(old))
    return [s for s in synced_stages(new) if s not in before]


def holder_of(stage: str, values: SyncValues) -> str | None:
    """``"lead"`` or ``"contact"``: the sync that takes ``stage``, or None."""
    if stage in values.lead_stages:
        return "lead"
    if stage in values.contact_stages:
        return "contact"
    return None
