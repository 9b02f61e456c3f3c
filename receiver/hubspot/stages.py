"""The stage catalogue: the lifecycle stages a sync may pick, with labels and order.

With a HubSpot token, the stages are the portal's own: the options of the contacts'
``lifecyclestage`` property (``GET /crm/v3/properties/contacts/lifecyclestage``), custom
stages included, read through the :class:`~receiver.hubspot.client.HubSpotClient` (its
pacer and error mapping) and kept for :data:`CACHE_S`. Without a token, or while HubSpot
cannot be read and nothing is cached, HubSpot's eight default stages plus every stage id
the configuration or the saved settings name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from receiver.ops.logging import get_logger
from receiver.sync.sync_settings import DEFAULT_STAGES

log = get_logger("receiver.hubspot.stages")

PROPERTY_PATH = "/crm/v3/properties/contacts/lifecyclestage"
CACHE_S = 600.0
#: After a failed read, the default catalogue serves this long before HubSpot is asked again.
RETRY_S = 30.0


@dataclass(frozen=True, slots=True)
class Stage:
    """One lifecycle stage of the catalogue."""

    id: str
    label: str
    order: int
    hidden: bool


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The stages offered, and whether they are the portal's own (``hubspot``)."""

    source: Literal["hubspot", "default"]
    stages: tuple[Stage, ...]

    def ids(self) -> list[str]:
        """Every stage id, in order."""
        return [s.id for s in self.stages]


class PropertyReader(Protocol):
    """Reads one HubSpot API document (the HubSpot client)."""

    async def get_json(self, path: str, now: float) -> dict[str, Any]:
        """The JSON object at ``path``."""
        ...


def default_catalogue(extra_ids: Iterable[str] = ()) -> Catalogue:
    """HubSpot's default stages, then any other stage id given, labelled by its id."""
    stages = [Stage(i, label, n, False) for n, (i, label) in enumerate(DEFAULT_STAGES)]
    known = {s.id for s in stages}
    for stage_id in dict.fromkeys(extra_ids):
        if stage_id not in known:
            stages.append(Stage(stage_id, stage_id, len(stages), False))
            known.add(stage_id)
    return Catalogue("default", tuple(stages))


def parse_options(payload: dict[str, Any]) -> Catalogue:
    """The catalogue from a property document's ``options``, by ``displayOrder``."""
    options = payload.get("options")
    if not isinstance(options, list):
        raise ValueError("the lifecyclestage property has no options list")
    stages = []
    for n, option in enumerate(options):
        if not isinstance(option, dict) or not isinstance(option.get("value"), str):
            continue
        order = option.get("displayOrder")
        label = option.get("label")
        stages.append(
            Stage(
                option["value"],
                label if isinstance(label, str) and label else option["value"],
                order if isinstance(order, int) and not isinstance(order, bool) else n,
                option.get("hidden") is True,
            )
        )
    stages.sort(key=lambda s: (s.order, s.id))
    return Catalogue("hubspot", tuple(stages))


class StageCatalogue:
    """The catalogue, from HubSpot when ``reader`` is set, cached for :data:`CACHE_S`."""

    def __init__(self, reader: PropertyReader | None, cache_s: float = CACHE_S) -> None:
        self.reader = reader
        self.cache_s = cache_s
        self._cached: Catalogue | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    async def get(self, now: float, extra_ids: Iterable[str] = ()) -> Catalogue:
        """The catalogue; ``extra_ids`` (stage ids in use) join the default one."""
        if self.reader is None:
            return default_catalogue(extra_ids)
        async with self._lock:  # one read for callers that arrive together
            if now >= self._until:
                await self._refresh(now)
        return self._cached if self._cached is not None else default_catalogue(extra_ids)

    async def _refresh(self, now: float) -> None:
        assert self.reader is not None
        try:
            self._cached = parse_options(await self.reader.get_json(PROPERTY_PATH, now))
            self._until = now + self.cache_s
        except Exception as exc:
            # A stale catalogue beats none; with none, the default one serves meanwhile.
            log.warning("stage_catalogue_read_failed", error=type(exc).__name__)
            self._until = now + RETRY_S
