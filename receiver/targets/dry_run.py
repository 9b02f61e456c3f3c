"""The ``dry-run`` target: keeps the Leads and Contacts it would write in our own database.

It lets a user try the whole flow before connecting a CRM, and ``stagesync records``
shows what it holds. Upserts merge fields, as a CRM upsert by external id does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from receiver.errors import UpstreamError
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult

DEFAULT_MAPPING: dict[str, dict[str, str]] = {
    "lead": {
        "FirstName": "firstname",
        "LastName": "lastname",
        "Email": "email",
        "Phone": "phone",
        "Title": "jobtitle",
        "Company": "company",
        "LifecycleStage": "lifecyclestage",
    },
    "contact": {
        "FirstName": "firstname",
        "LastName": "lastname",
        "Email": "email",
        "Phone": "phone",
        "Title": "jobtitle",
        "LifecycleStage": "lifecyclestage",
    },
}


class RecordStore(Protocol):
    """Where the dry-run target keeps its records: the service's own event store.

    A port, so that targets never import the store: any ``EventStore`` fits it.
    """

    async def upsert_records(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], now: float
    ) -> list[tuple[str, bool]]:
        """Merge fields into records ``(kind, hubspot_id, fields)``; ids and created flags."""
        ...

    async def delete_records(self, hubspot_id: str) -> int:
        """Delete the Lead and Contact of a HubSpot id; returns how many."""
        ...


class DryRunTarget:
    """A :class:`~receiver.targets.base.Target` writing to the service's own store."""

    name = "dry-run"
    one_kind_per_call = False
    calls_are_metered = False  # local writes: a wait would buy nothing
    batch_size = 200
    supports_convert = False

    def __init__(self, *, store: RecordStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def api_status(self) -> dict[str, Any] | None:
        """None: our own database has no API allocation."""
        return None

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Salesforce-like field names, plus the lifecycle stage for visibility."""
        return dict(DEFAULT_MAPPING[kind])

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """Upsert one record."""
        result = (await self.upsert_batch([request]))[0]
        if isinstance(result, UpstreamError):
            raise result
        return result

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert many records in one transaction."""
        items: list[tuple[str, str, dict[str, Any]]] = [
            (r.kind, r.hubspot_id, dict(r.fields)) for r in requests
        ]
        results = await self.store.upsert_records(items, self.clock())
        return [UpsertResult(target_id, created) for target_id, created in results]

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """Delete the Lead and the Contact of a HubSpot id."""
        return await self.store.delete_records(hubspot_id)

    async def aclose(self) -> None:
        """Nothing to release: the store belongs to the app."""
