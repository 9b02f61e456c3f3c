"""One contact's work in a dispatch round, and the outcomes it records.

A :class:`ContactWork` starts from a claimed contact and its
:class:`~receiver.sync.rules.ContactPlan`; the dispatcher fills in the remote operation's
result, then :meth:`ContactWork.prior`, ``ContactWork.result`` and
:meth:`ContactWork.waiting` give the rows the store records in one transaction.

A job also carries its lease: ``start_by`` is the last moment its remote call may
start, ``lease_until`` when the store's lease runs out and another claimer (this
process included) may take the contact. See :mod:`receiver.dispatch.dispatcher` for why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from receiver.models import ClaimedContact, ContactUpdate, Outcome, StoredEvent
from receiver.sync.mapping import LIFECYCLE_STAGE, map_fields, record_digest
from receiver.sync.rules import (
    RECONCILE,
    ContactPlan,
    Decision,
    RoutingConfig,
    converts,
    decide,
    stage_from_webhook,
    webhook_properties,
)
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult

WAITING_CODE = "waiting"
#: Contacts a round handles between two turns of the event loop.
SLICE = 25


@dataclass(eq=False)
class ContactWork:
    """Mutable work state of one contact for one round."""

    claimed: ClaimedContact
    plan: ContactPlan
    lease_until: float = float("inf")
    start_by: float = float("inf")
    request: UpsertRequest | None = None
    stage: str | None = None
    reason: str | None = None  # reason recorded on the carrier (skip reason or no-demotion)
    result: list[Outcome] = field(default_factory=list)
    contact: ContactUpdate | None = None
    finished: bool = False  # recorded or given up; its in-flight slot is free

    @property
    def object_id(self) -> int:
        """The HubSpot contact id."""
        return self.claimed.object_id

    @property
    def op(self) -> str | None:
        """``"delete"``, ``"upsert"`` or None once nothing remote is left to do."""
        if self.result:
            return None
        if self.plan.delete is not None:
            return "delete"
        if self.request is not None:
            return "upsert"
        return None

    # -- transitions (pure: the dispatcher does the I/O) ----------------------------

    def resolve(
        self,
        properties: Mapping[str, str | None] | None,
        routing: RoutingConfig,
        mappings: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Decide from HubSpot's current ``properties`` (None: HubSpot has no such contact).

        A contact HubSpot holds with no stage is in no synced stage: ``stage-not-synced``
        (``stage-unknown`` is for when stagesync cannot ask, without a token).
        """
        carrier = self.plan.carrier
        assert carrier is not None
        if properties is None:
            self.result.append(Outcome(carrier.id, "skipped", reason="not-found"))
            return
        stage = properties.get(LIFECYCLE_STAGE) or None
        self._decide(stage, properties, routing, mappings, known=True)

    def resolve_from_webhook(
        self, routing: RoutingConfig, mappings: Mapping[str, Mapping[str, str]]
    ) -> None:
        """Decide without a token: the stage and properties the events carried.

        The stage falls back to the last one synced; with neither, ``stage-unknown``.
        """
        carrier = self.plan.carrier
        assert carrier is not None
        events = (*self.plan.coalesced, carrier)
        stage = stage_from_webhook(events, self.claimed.state)
        self._decide(stage, webhook_properties(events), routing, mappings)

    def _decide(
        self,
        stage: str | None,
        properties: Mapping[str, str | None],
        routing: RoutingConfig,
        mappings: Mapping[str, Mapping[str, str]],
        *,
        known: bool = False,
    ) -> None:
        carrier = self.plan.carrier
        assert carrier is not None
        state = self.claimed.state
        self.stage = stage
        decision = decide(stage, state.kind if state else None, routing)
        if known and stage is None:
            # HubSpot's current value, not a gap in what we know: the contact has no stage.
            decision = Decision(None, "stage-not-synced")
        if decision.kind is None:
            self.result.append(Outcome(carrier.id, "skipped", reason=decision.reason, stage=stage))
            if decision.reason in ("stage-not-synced", "sync-off"):
                # Remember the stage (and the time) so an older event stays stale and a
                # token-less property change knows where the contact stands.
                self.contact = ContactUpdate(
                    self.object_id,
                    state.kind if state else None,
                    state.target_id if state else None,
                    stage,
                    self.applied_at(carrier),
                    state.record_digest if state else None,
                )
            return
        self.reason = decision.reason
        kind = decision.kind
        fields = map_fields(mappings[kind], properties)
        # A record of this kind exists already: the upsert updates it, and fields the
        # events did not carry must not be overwritten with placeholders.
        exists = state is not None and state.kind == kind and bool(state.target_id)
        if (
            carrier.subscription_type == RECONCILE
            and exists
            and state is not None
            and state.record_digest == record_digest(kind, fields)
        ):
            # HubSpot bumps the modification time for analytics properties all day: the
            # record, not the timestamp, says whether there is anything to write.
            self.result.append(Outcome(carrier.id, "skipped", reason="unchanged", stage=stage))
            self.contact = ContactUpdate(
                self.object_id,
                state.kind,
                state.target_id,
                stage,
                self.applied_at(carrier),
                state.record_digest,
            )
            return
        # A Lead may turn out converted in the CRM: its update then goes to the Contact.
        contact_fields = map_fields(mappings["contact"], properties) if kind == "lead" else None
        self.request = UpsertRequest(
            kind,
            str(self.object_id),
            fields,
            may_create=not exists,
            convert=converts(decision, state.kind if state else None, routing),
            contact_fields=contact_fields,
            event=event_ref(carrier),
        )

    def synced(self, result: UpsertResult) -> None:
        """The upsert succeeded: the carrier is ``synced`` and the contact state moves on."""
        carrier = self.plan.carrier
        assert carrier is not None and self.request is not None
        kind = result.kind or self.request.kind  # a converted Lead's update went to its Contact
        self.result.append(
            Outcome(
                carrier.id,
                "synced",
                reason=self.reason,
                stage=self.stage,
                target_kind=kind,
                target_id=result.target_id,
            )
        )
        self.contact = ContactUpdate(
            self.object_id,
            kind,
            result.target_id,
            self.stage,
            self.applied_at(carrier),
            record_digest(kind, self.request.fields),
        )

    def deleted(self) -> None:
        """The deletion succeeded: nothing is synced for the contact any more."""
        event = self.plan.delete
        assert event is not None
        self.result.append(Outcome(event.id, "synced"))
        self.contact = ContactUpdate(self.object_id, None, None, None, self.applied_at(event))

    # -- outcomes --------------------------------------------------------------------

    def prior(self) -> list[Outcome]:
        """Outcomes known before any remote call: plain skips and coalesced events."""
        out = [
            Outcome(event_id=e.id, state="skipped", reason=reason)
            for e, reason in self.plan.skipped
        ]
        carrier = self.plan.carrier
        if carrier is not None:
            out.extend(
                Outcome(
                    event_id=e.id, state="skipped", reason="coalesced", coalesced_into=carrier.id
                )
                for e in self.plan.coalesced
            )
        delete = self.plan.delete
        if delete is not None:
            out.extend(
                Outcome(
                    event_id=e.id, state="skipped", reason="coalesced", coalesced_into=delete.id
                )
                for e in self.plan.delete_riders
            )
        return out

    def waiting(self) -> list[Outcome]:
        """Deferred events held back behind a deletion that is being retried.

        They take the deletion's next attempt time, without using an attempt, so they
        are claimed together with it and run after it. When the deletion succeeded or
        failed for good they get no outcome: they stay open and run next round.
        """
        delete = self.plan.delete
        main = self.result[0] if self.result else None
        if delete is None or main is None or main.state != "retrying":
            return []
        return [
            Outcome(
                event_id=e.id,
                state="retrying",
                error_code=WAITING_CODE,
                error_message=f"waits for deletion event {delete.id}, which is being retried",
                next_attempt_at=main.next_attempt_at,
                counts_attempt=False,
            )
            for e in self.plan.deferred
        ]

    def outcomes(self) -> list[Outcome]:
        """Every row this job records: prior skips, the remote result, waiting events."""
        return [*self.prior(), *self.result, *self.waiting()]

    @property
    def main_event(self) -> StoredEvent | None:
        """The event whose outcome depends on the remote call."""
        return self.plan.delete or self.plan.carrier

    def applied_at(self, event: StoredEvent) -> int | None:
        """The newer of the event's time and what was applied before."""
        state = self.claimed.state
        before = state.last_occurred_at if state else None
        now = event.occurred_at
        if before is None:
            return now
        if now is None:
            return before
        return max(before, now)


def event_ref(event: StoredEvent) -> EventRef:
    """What a target may know of the event it carries out."""
    return EventRef(event.id, event.occurred_at, event.attempt_floor)


async def breathe(done: int) -> None:
    """Let the event loop serve webhooks every ``SLICE`` contacts of a round's own work.

    Planning, deciding and recording a round of 200 contacts is some 10 ms of Python;
    done in one go, every webhook request in flight waited it out.
    """
    if done % SLICE == 0:
        await asyncio.sleep(0)
