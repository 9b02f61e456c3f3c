"""One contact's work in a dispatch round, and the outcomes it records.

A :class:`Job` starts from a claimed contact and its :class:`~receiver.rules.ContactPlan`;
the dispatcher fills in the remote operation's result, then :meth:`Job.outcomes` turns
everything into the rows the store records in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from receiver.models import ClaimedContact, ContactUpdate, Outcome, StoredEvent
from receiver.rules import ContactPlan
from receiver.targets.base import UpsertRequest


@dataclass
class Job:
    """Mutable work state of one contact for one round."""

    claimed: ClaimedContact
    plan: ContactPlan
    request: UpsertRequest | None = None
    stage: str | None = None
    reason: str | None = None  # reason recorded on the carrier (skip reason or no-demotion)
    result: list[Outcome] = field(default_factory=list)
    contact: ContactUpdate | None = None

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
                Outcome(event_id=e.id, state="skipped", reason="coalesced", coalesced_into=delete.id)
                for e in self.plan.delete_riders
            )
        return out

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
