"""The stage catalogue: HubSpot's property options, the default stages, the cache."""

from __future__ import annotations

from typing import Any

from receiver.errors import TransientError
from receiver.hubspot.stages import PROPERTY_PATH, StageCatalogue, default_catalogue, parse_options
from tests.fakes.hubspot import default_stage_options, stage_option


class Reader:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.calls: list[str] = []
        self.fail = False

    async def get_json(self, path: str, now: float) -> dict[str, Any]:
        self.calls.append(path)
        if self.fail:
            raise TransientError("http_503", "down")
        return self.payload


def test_options_are_ordered_by_display_order_with_labels_and_hidden_flags() -> None:
    options = [stage_option("b", "Bee", 2, hidden=True), stage_option("a", "Ay", 1)]
    catalogue = parse_options({"options": options})
    assert catalogue.source == "hubspot"
    assert [(s.id, s.label, s.order, s.hidden) for s in catalogue.stages] == [
        ("a", "Ay", 1, False),
        ("b", "Bee", 2, True),
    ]


def test_the_default_catalogue_adds_configured_ids_once_after_the_eight_stages() -> None:
    catalogue = default_catalogue(["lead", "123", "123"])
    assert len(catalogue.stages) == 9 and catalogue.stages[-1].id == "123"
    assert catalogue.stages[1].label == "Lead"


async def test_the_catalogue_is_cached_and_a_failed_read_keeps_the_stale_copy() -> None:
    reader = Reader({"options": [*default_stage_options(), stage_option("77", "Partner", 9)]})
    catalogue = StageCatalogue(reader, cache_s=600)
    first = await catalogue.get(0.0)
    assert first.source == "hubspot" and first.ids()[-1] == "77"
    await catalogue.get(599.0)
    assert reader.calls == [PROPERTY_PATH]
    reader.fail = True
    assert (await catalogue.get(601.0)) == first
    assert len(reader.calls) == 2


async def test_without_a_cache_a_failed_read_serves_the_default_catalogue() -> None:
    reader = Reader({})
    reader.fail = True
    catalogue = await StageCatalogue(reader).get(0.0, ["9"])
    assert catalogue.source == "default" and catalogue.ids()[-1] == "9"
