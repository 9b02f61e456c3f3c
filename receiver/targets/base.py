"""The ``Target`` protocol every CRM implementation follows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from receiver.errors import UpstreamError
from receiver.models import Kind


@dataclass(frozen=True, slots=True)
class EventRef:
    """The stored event a target call carries out.

    ``id`` is stagesync's event id, ``occurred_at`` HubSpot's ``occurredAt`` (ms) and
    ``delivery`` how many attempts came before its last replay: together they name one
    delivery of one event, which a target may pass on (the webhook target's
    ``webhook-id``) so that its receiver can drop repeats.
    """

    id: int
    occurred_at: int | None = None
    delivery: int = 0


@dataclass(frozen=True, slots=True)
class UpsertRequest:
    """One record to upsert: ``fields`` are already mapped to target field names.

    ``may_create`` is False when stagesync already wrote a record of this kind for the
    contact, so the upsert is an update: a target then leaves fields that are absent
    from ``fields`` alone instead of filling required ones with placeholders (which
    would overwrite real values). Targets without placeholders ignore it.

    ``convert`` asks a target that can (``supports_convert``) to convert the contact's
    Lead into this Contact (``PROMOTION=convert``). ``contact_fields`` are the same
    properties mapped for a Contact, for a Lead request whose Lead turns out to have
    been converted in the CRM: the update then goes to that Contact.
    """

    kind: Kind
    hubspot_id: str
    fields: Mapping[str, Any]
    may_create: bool = True
    event: EventRef | None = None
    convert: bool = False
    contact_fields: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """The target's id for the record, and whether the upsert created it.

    ``kind`` is set when the record written is of another kind than the request's: a
    Lead converted in the CRM, whose update went to its Contact.
    """

    target_id: str
    created: bool
    kind: Kind | None = None


class Target(Protocol):
    """A CRM that stagesync upserts Leads and Contacts into.

    Errors are raised as :mod:`receiver.errors` types: ``RateLimited``,
    ``TransientError`` (retry later) or ``PermanentError`` (fail the event).
    """

    name: str
    batch_size: int  # most records one ``upsert_batch`` call takes
    one_kind_per_call: bool  # each of its calls carries Leads or Contacts, not both
    #: Its calls count against an API allowance and a batch is one call, so a burst's
    #: records are worth a short wait for a fuller batch (the dispatcher's workers).
    calls_are_metered: bool
    supports_convert: bool  # whether promotion = "convert" is possible

    def api_status(self) -> dict[str, Any] | None:
        """``{"used", "limit", "paused"}``: the CRM's API allocation as last reported and
        whether calls are held back for it; None for a target without one."""
        ...

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Target field -> HubSpot property, before the user's overrides."""
        ...

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Create or update one record keyed by the HubSpot id."""
        ...

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert many records; one result or per-record error per request, in order.

        An error that concerns the whole call (outage, rate limit) is raised instead.
        """
        ...

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """Delete every record (Lead and Contact) for a HubSpot id; returns how many.

        A record that is absent counts as deleted already (it adds nothing to the count).
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class BulkTarget(Protocol):
    """A target with a bulk path for large syncs (Salesforce's Bulk API 2.0).

    The dispatcher hands it a backlog of ``bulk_threshold`` records or more, ready at
    once, as one :meth:`bulk_upsert`; a backfill may too. ``bulk_threshold`` 0: never.
    """

    bulk_threshold: int

    async def bulk_upsert(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert many records as :meth:`Target.upsert_batch` does, in bulk jobs."""
        ...
