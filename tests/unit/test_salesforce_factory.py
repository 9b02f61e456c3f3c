"""The target factory: Salesforce settings become a wired target; usage is logged sparingly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from receiver.ops.metrics import Metrics
from receiver.store.factory import make_store
from receiver.targets.base import UpsertRequest
from receiver.targets.dry_run import DryRunTarget
from receiver.targets.factory import make_target
from receiver.targets.salesforce.target import SalesforceTarget
from receiver.targets.salesforce.usage import UsageLogger
from tests.conftest import build_settings

ACCESS = "00Dxx0000001gPL!FactoryAccessToken"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def test_usage_logger_logs_at_once_then_at_most_once_per_interval() -> None:
    now = [1000.0]
    logger = UsageLogger(interval_s=60.0, clock=lambda: now[0])
    with capture_logs() as logs:
        logger(10, 15000)
        now[0] += 59.0
        logger(11, 15000)
        now[0] += 1.0
        logger(12, 15000)
    assert [(e["event"], e["used"], e["limit"]) for e in logs] == [
        ("salesforce_api_usage", 10, 15000),
        ("salesforce_api_usage", 12, 15000),
    ]
    assert logs[0]["log_level"] == "info"
    assert logs[0]["percent"] == 0.1


def test_usage_logger_warns_from_ninety_percent_of_the_allocation() -> None:
    with capture_logs() as logs:
        UsageLogger()(13500, 15000)
        UsageLogger()(5, 0)  # a zero limit must not divide by zero
    assert [e["log_level"] for e in logs] == ["warning", "info"]
    assert logs[0]["percent"] == 90.0


async def test_make_target_wires_salesforce_settings_metrics_and_usage_log(
    tmp_path: Path,
) -> None:
    seen: list[httpx.Request] = []

    async def salesforce(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201,
            json={"id": "00Q000000000001AAA", "success": True, "errors": [], "created": True},
            headers={"Sforce-Limit-Info": "api-usage=42/15000"},
        )

    settings = build_settings(
        tmp_path,
        target="salesforce",
        salesforce_instance_url="https://acme.my.salesforce.com",
        salesforce_access_token=ACCESS,
        salesforce_api_version="v60.0",
        salesforce_external_id_field="Hs_Id__c",
        salesforce_max_concurrency=3,
    )
    metrics = Metrics()
    store = make_store(settings.database_url)
    async with httpx.AsyncClient(transport=httpx.MockTransport(salesforce)) as http:
        target = make_target(
            settings.target, settings.target_settings, store=store, http=http, metrics=metrics
        )
        assert isinstance(target, SalesforceTarget)
        assert target.config.max_concurrency == 3
        assert ACCESS not in repr(target)
        with capture_logs() as logs:
            await target.upsert(UpsertRequest("lead", "7", {"LastName": "L", "Company": "C"}))
    assert str(seen[0].url) == (
        "https://acme.my.salesforce.com/services/data/v60.0/sobjects/Lead/Hs_Id__c/7"
    )
    assert seen[0].headers["Authorization"] == f"Bearer {ACCESS}"
    assert target.api_usage == (42, 15000)
    assert [(e["event"], e["used"], e["limit"]) for e in logs] == [
        ("salesforce_api_usage", 42, 15000)
    ]
    assert ACCESS not in repr(logs)
    assert b'stagesync_upstream_calls_total{api="target",status="2xx"} 1.0' in metrics.render()


async def test_make_target_defaults_to_dry_run(tmp_path: Path, http: httpx.AsyncClient) -> None:
    settings = build_settings(tmp_path)
    target = make_target(
        settings.target,
        settings.target_settings,
        store=make_store(settings.database_url),
        http=http,
        metrics=Metrics(),
    )
    assert isinstance(target, DryRunTarget)
