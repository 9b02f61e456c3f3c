"""Stage routing: which events sync, and whether a contact goes in as Lead or Contact.

Pure functions, no I/O. :func:`decide` mirrors HubSpot's own data sync: two disjoint
stage sets, promotion creates a Contact and leaves the Lead, and a Contact is never
turned back into a Lead (``no-demotion``). :func:`plan_contact` sorts one contact's
pending events into what is skipped now, which event carries the sync (the newest;
the rest are ``coalesced``) and which deletions run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from receiver.models import ContactState, Kind, StoredEvent
from receiver.sync.mapping import LIFECYCLE_STAGE

PROPERTY_CHANGE = "contact.propertyChange"
#: Events that backfill and reconciliation make from HubSpot's search answer.
BACKFILL = "stagesync.backfill"
RECONCILE = "stagesync.reconcile"
SEARCH_TYPES = frozenset({BACKFILL, RECONCILE})
SYNC_TYPES = frozenset(
    {PROPERTY_CHANGE, "contact.creation", "contact.restore", "contact.merge", *SEARCH_TYPES}
)
PRIVACY_DELETION = "contact.privacyDeletion"
DELETION = "contact.deletion"


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The configured stage sets, deletion policy and synced properties.

    ``properties`` are the HubSpot properties whose change syncs a contact (the mapped
    ones; the lifecycle stage always does). None means every property change syncs.
    ``promotion`` is ``PROMOTION``: whether a promoted contact's Lead is converted.
    """

    lead_stages: frozenset[str]
    contact_stages: frozenset[str]
    on_delete: Literal["ignore", "delete"] = "ignore"
    properties: frozenset[str] | None = None
    promotion: Literal["create-contact", "convert"] = "create-contact"
    lead_sync: bool = True
    contact_sync: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """Upsert as ``kind``, or skip; ``reason`` is the skip reason or ``no-demotion``."""

    kind: Kind | None
    reason: str | None = None

    @property
    def skip(self) -> bool:
        """True when nothing is written."""
        return self.kind is None


def decide(stage: str | None, previous_kind: str | None, config: RoutingConfig) -> Decision:
    """Route a contact by its current stage and what it was last synced as."""
    if stage is None:
        return Decision(None, "stage-unknown")
    if stage in config.contact_stages:
        return Decision("contact") if config.contact_sync else Decision(None, "sync-off")
    if stage in config.lead_stages:
        if not config.lead_sync:
            return Decision(None, "sync-off")
        if previous_kind == "contact":
            return Decision("contact", "no-demotion")
        return Decision("lead")
    return Decision(None, "stage-not-synced")


def converts(decision: Decision, previous_kind: str | None, config: RoutingConfig) -> bool:
    """Whether the upsert converts the contact's Lead (``PROMOTION=convert``).

    A Contact for a contact not yet synced as one: promoted from a Lead, or first seen at
    a contact stage with a Lead made before stagesync knew it. The target converts the
    Lead it finds, and upserts the Contact when it finds none.
    """
    return (
        config.promotion == "convert" and decision.kind == "contact" and previous_kind != "contact"
    )


def event_action(
    subscription_type: str | None, config: RoutingConfig, property_name: str | None = None
) -> tuple[str, str | None]:
    """``("sync"|"delete"|"skip", reason)`` for a subscription type.

    A property change syncs only for the lifecycle stage or a synced property
    (:attr:`RoutingConfig.properties`); any other is ``unsupported``.
    """
    if subscription_type == PROPERTY_CHANGE and not _synced_property(property_name, config):
        return "skip", "unsupported"
    if subscription_type in SYNC_TYPES:
        return "sync", None
    if subscription_type == PRIVACY_DELETION:
        return "delete", None
    if subscription_type == DELETION:
        if config.on_delete == "delete":
            return "delete", None
        return "skip", "deletion-ignored"
    return "skip", "unsupported"


def _synced_property(name: str | None, config: RoutingConfig) -> bool:
    # An event without a property name cannot be told apart, so it brings the contact
    # up to date rather than being dropped.
    if config.properties is None or name is None or name == LIFECYCLE_STAGE:
        return True
    return name in config.properties


def _property_name(event: StoredEvent) -> str | None:
    name = event.raw.get("propertyName")
    return name if isinstance(name, str) else None


@dataclass(frozen=True, slots=True)
class ContactPlan:
    """What to do with one contact's due events in this round.

    ``skipped`` are final now, as ``(event, reason)``. ``delete`` is the newest deletion
    event to carry out, and ``carrier`` the event whose sync brings the contact up to
    date; ``coalesced`` ride on it. ``deferred`` events stay open for the next round
    (a sync newer than a deletion of the same round): they are not part of this round's
    outcome, and while the deletion is retried they wait with it
    (:meth:`receiver.dispatch.work.ContactWork.waiting`), so a restore never overtakes its deletion.
    """

    skipped: tuple[tuple[StoredEvent, str], ...]
    delete: StoredEvent | None
    delete_riders: tuple[StoredEvent, ...]
    carrier: StoredEvent | None
    coalesced: tuple[StoredEvent, ...]
    deferred: tuple[StoredEvent, ...]


def _occurred(event: StoredEvent) -> int:
    return event.occurred_at or 0


def plan_contact(
    events: Sequence[StoredEvent], state: ContactState | None, config: RoutingConfig
) -> ContactPlan:
    """Split a contact's due events (any order) into a plan for this round."""
    ordered = sorted(events, key=lambda e: (_occurred(e), e.id))
    skipped: list[tuple[StoredEvent, str]] = []
    syncs: list[StoredEvent] = []
    deletes: list[StoredEvent] = []
    applied = state.last_occurred_at if state and state.last_occurred_at is not None else None
    for event in ordered:
        action, reason = event_action(event.subscription_type, config, _property_name(event))
        if action == "skip":
            skipped.append((event, reason or "unsupported"))
        elif action == "delete":
            # A privacy deletion is a legal erasure and is always carried out; a plain
            # deletion older than what was applied (a restore came first) is stale.
            stale = applied is not None and _occurred(event) < applied
            if stale and event.subscription_type == DELETION:
                skipped.append((event, "stale"))
            else:
                deletes.append(event)
        elif applied is not None and _occurred(event) < applied:
            skipped.append((event, "stale"))
        else:
            syncs.append(event)
    delete = deletes[-1] if deletes else None
    riders = tuple(deletes[:-1])
    deferred: tuple[StoredEvent, ...] = ()
    if delete is not None and syncs:
        if _occurred(syncs[-1]) <= _occurred(delete):
            skipped.extend((e, "stale") for e in syncs)
            syncs = []
        else:
            # Delete first; the later sync (a restore) runs in the next round.
            deferred = tuple(syncs)
            syncs = []
    carrier = syncs[-1] if syncs else None
    return ContactPlan(
        skipped=tuple(skipped),
        delete=delete,
        delete_riders=riders,
        carrier=carrier,
        coalesced=tuple(syncs[:-1]),
        deferred=deferred,
    )


def webhook_properties(events: Sequence[StoredEvent]) -> dict[str, str | None]:
    """The properties a contact's events carried, the newest value winning."""
    props: dict[str, str | None] = {}
    for event in sorted(events, key=lambda e: (_occurred(e), e.id)):
        name = event.raw.get("propertyName")
        if isinstance(name, str) and "propertyValue" in event.raw:
            value = event.raw["propertyValue"]
            props[name] = None if value is None else str(value)
    return props


def carried_properties(event: StoredEvent) -> dict[str, str | None] | None:
    """The properties a backfill or reconcile event carries (what the search returned).

    None for any other event: a webhook says only *that* something changed, so its
    contact is read from HubSpot. A search answer is as current as a read would be.
    """
    if event.subscription_type not in SEARCH_TYPES:
        return None
    props = event.raw.get("properties")
    if not isinstance(props, dict):
        return None
    return {str(k): None if v is None else str(v) for k, v in props.items()}


def stage_from_webhook(events: Sequence[StoredEvent], state: ContactState | None) -> str | None:
    """The newest stage the events carried, else the last stage synced, else None."""
    for event in sorted(events, key=lambda e: (_occurred(e), e.id), reverse=True):
        if event.stage is not None:
            return event.stage
    return state.stage if state else None


def stage_sets_overlap(lead: Collection[str], contact: Collection[str]) -> list[str]:
    """Stages in both sets (a configuration error)."""
    return sorted(set(lead) & set(contact))
