"""Deciding a round: current properties for each contact, then Lead, Contact or skip.

A contact's properties come from, in order: what a backfill or reconcile event carries
(the search's answer, so no read), one HubSpot batch read for the rest when a token is
configured, or else the webhook's own data. A failed read puts its outcome on the jobs
that needed it (a rate limit uses no attempt); the others are decided as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from receiver.dispatch.work import ContactWork, breathe
from receiver.errors import RateLimited
from receiver.sync.mapping import hubspot_properties
from receiver.sync.rules import RoutingConfig, carried_properties


class ContactReader(Protocol):
    """Reads current contact properties (the HubSpot client)."""

    async def batch_read(
        self, ids: Sequence[int], properties: Sequence[str], now: float
    ) -> dict[int, dict[str, str | None]]:
        """Properties of the contacts that exist; missing ones are absent."""
        ...


class FailJobs(Protocol):
    """Puts an error's outcome on jobs (the round recorder's ``fail``)."""

    def __call__(
        self, jobs: Sequence[ContactWork], exc: BaseException, api: str, streak: int
    ) -> None:
        """``streak`` counts ``api``'s rate-limit answers in a row."""
        ...


class RoundResolver:
    """Fetches and decides the contacts of a round; see the module docstring."""

    def __init__(
        self,
        *,
        hubspot: ContactReader | None,
        mappings: Mapping[str, Mapping[str, str]],
        fail: FailJobs,
    ) -> None:
        self.hubspot = hubspot
        self.mappings = mappings
        self.fail = fail
        #: The HubSpot properties a read asks for: every mapped one, and the stage.
        self.properties = hubspot_properties(*mappings.values())
        #: Rate-limit answers from HubSpot in a row (the workers count the target's).
        self.streak = 0

    async def resolve(self, jobs: list[ContactWork], now: float, routing: RoutingConfig) -> None:
        """Fetch current properties for the jobs that sync, and decide each one."""
        syncing = [j for j in jobs if j.plan.carrier is not None and j.plan.delete is None]
        if not syncing:
            return
        carried = {}
        for job in syncing:
            assert job.plan.carrier is not None
            props = carried_properties(job.plan.carrier)
            if props is not None:
                carried[job.object_id] = props
        to_read = [j for j in syncing if j.object_id not in carried]
        fetched: dict[int, dict[str, str | None]] | None = None
        if self.hubspot is not None and to_read:
            try:
                fetched = await self.hubspot.batch_read(
                    [j.object_id for j in to_read], self.properties, now
                )
                self.streak = 0
            except Exception as exc:
                if isinstance(exc, RateLimited):
                    self.streak += 1
                self.fail(to_read, exc, "hubspot", self.streak)
                syncing = [j for j in syncing if j.object_id in carried]
        for n, job in enumerate(syncing, 1):
            if job.object_id in carried:
                job.resolve(carried[job.object_id], routing, self.mappings)
            elif fetched is not None:
                job.resolve(fetched.get(job.object_id), routing, self.mappings)
            else:
                job.resolve_from_webhook(routing, self.mappings)
            await breathe(n)
