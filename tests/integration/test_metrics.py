"""What monitors see: ``/metrics`` after a known run, and ``/readyz`` when things go wrong."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from receiver.dispatch.dispatcher import STALL_S
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.fakes.hubspot import DEFAULT_TOKEN, create_fake_hubspot
from tests.support.clock import Clock
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

T0 = 1_767_225_600.0
WAIT_S = 5.0
SPEC_METRICS = {
    "stagesync_events_received": "counter",
    "stagesync_events_accepted": "counter",
    "stagesync_events_duplicate": "counter",
    "stagesync_events_invalid": "counter",
    "stagesync_ack_seconds": "histogram",
    "stagesync_events_outcome": "counter",
    "stagesync_sync_seconds": "histogram",
    "stagesync_queue_depth": "gauge",
    "stagesync_oldest_pending_seconds": "gauge",
    "stagesync_upstream_calls": "counter",
    "stagesync_retries_scheduled": "counter",
    # Part 2: backfill and reconciliation
    "stagesync_backfill_contacts": "counter",
    "stagesync_reconcile_runs": "counter",
    "stagesync_reconcile_lag_seconds": "gauge",
}


class Scrape:
    """Parsed ``/metrics`` text."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the labelled child was never touched."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0

    def labelled(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in self.samples if s.name == name}


async def wait_for(check: Any) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def post(
    http: httpx.AsyncClient, base: str, events: list[Any], clock: Callable[[], float]
) -> Any:
    url = f"{base}/webhooks/hubspot"
    body, headers = signed(url, events, SECRET, now_ms=int(clock() * 1000))
    answer = await http.post(url, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_metrics_after_a_known_run_count_exactly_what_happened(tmp_path: Path) -> None:
    fake = create_fake_hubspot(
        contacts={
            1: {"lifecyclestage": "lead", "lastname": "Lovelace"},
            2: {"lifecyclestage": "customer", "lastname": "Hopper"},
            3: {"lifecyclestage": "other"},
        }
    )
    fake.server_error = 1  # the first batch read answers 503, so retries get scheduled
    clock = time.time  # real time: the retries must come due
    async with running_server(fake.app) as hubspot_url:
        settings = build_settings(
            tmp_path,
            hubspot_access_token=DEFAULT_TOKEN,
            hubspot_api_url=hubspot_url,
            retry_base_s=0.01,
            retry_max_s=0.02,
        )
        app = create_app(settings)
        async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
            store = app.state.ctx.store
            first = event(1, "lead")
            batch = [first, event(2, "customer"), event(3, "other"), {"objectId": 4}]
            assert await post(http, base, batch, clock) == {
                "accepted": 3,
                "duplicates": 0,
                "invalid": 1,
            }

            async def all_closed() -> bool:
                counts = await store.counts()
                return not counts.get("pending") and not counts.get("retrying")

            await wait_for(all_closed)
            redelivered = {**first, "attemptNumber": 1}
            assert await post(http, base, [redelivered], clock) == {
                "accepted": 0,
                "duplicates": 1,
                "invalid": 0,
            }
            unsigned = await http.post(
                f"{base}/webhooks/hubspot", json=[first], headers={"X-HubSpot-Signature-v3": "x"}
            )
            assert unsigned.status_code == 401

            answer = await http.get(f"{base}/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            scrape = Scrape(answer.text)
            histories = [await store.history(i) for i in (1, 2, 3)]
            retries_in_history = sum(h.outcome == "retry" for hs in histories for h in hs)

    for name, kind in SPEC_METRICS.items():
        assert scrape.families[name].type == kind, name
    assert all(name.startswith("stagesync_") for name in scrape.families)

    # Received counts every event of signed, parsed requests: 4 + 1; not the unsigned one.
    assert scrape.value("stagesync_events_received_total") == 5
    assert scrape.value("stagesync_events_accepted_total") == 3
    assert scrape.value("stagesync_events_duplicate_total") == 1
    assert scrape.value("stagesync_events_invalid_total") == 1
    # One observation per webhook request, whatever its answer.
    assert scrape.value("stagesync_ack_seconds_count") == 3

    assert retries_in_history >= 1
    outcomes = scrape.labelled("stagesync_events_outcome_total")
    assert outcomes == {
        (("reason", ""), ("state", "synced")): 2,
        (("reason", "stage-not-synced"), ("state", "skipped")): 1,
        (("reason", ""), ("state", "retrying")): retries_in_history,
    }
    assert scrape.value("stagesync_retries_scheduled_total") == retries_in_history
    assert scrape.value("stagesync_sync_seconds_count") == 2
    assert 0 < scrape.value("stagesync_sync_seconds_sum") < WAIT_S

    calls = scrape.labelled("stagesync_upstream_calls_total")
    assert calls == {
        (("api", "hubspot"), ("status", "5xx")): 1,
        (("api", "hubspot"), ("status", "2xx")): fake.batch_read_calls - 1,
    }
    assert fake.answers.count(503) == 1
    assert fake.batch_read_calls - 1 == sum(1 for a in fake.answers if a in (200, 207))

    depth = scrape.labelled("stagesync_queue_depth")
    assert depth == {
        (("state", "pending"),): 0,
        (("state", "retrying"),): 0,
        (("state", "synced"),): 2,
        (("state", "skipped"),): 1,
        (("state", "failed"),): 0,
        (("state", "invalid"),): 1,
    }
    assert scrape.value("stagesync_oldest_pending_seconds") == 0


# -- readiness -----------------------------------------------------------------------


async def readiness_after_jump(http: httpx.AsyncClient, base: str) -> httpx.Response:
    """``/readyz`` once the dispatcher has ticked at the clock's new time (within 1 s).

    A jump of the test clock makes the dispatcher look stalled until its next poll.
    """
    answers: list[httpx.Response] = []

    async def ticked() -> bool:
        answers.append(await http.get(f"{base}/readyz"))
        return bool(answers[-1].json()["checks"]["dispatcher"] == "ok")

    await wait_for(ticked)
    return answers[-1]


@asynccontextmanager
async def service(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Any, str, Any]]:
    clock = Clock(T0)
    app = create_app(build_settings(tmp_path, **overrides), clock=clock)
    async with running_server(app) as base, httpx.AsyncClient(timeout=10) as http:
        yield app, base, (http, clock)


async def test_readyz_is_200_with_every_check_ok_while_the_service_works(tmp_path: Path) -> None:
    async with service(tmp_path, ready_max_pending_age_s=900) as (_, base, (http, _clock)):
        answer = await http.get(f"{base}/readyz")
        assert answer.status_code == 200
        assert answer.json() == {
            "status": "ready",
            "checks": {"database": "ok", "dispatcher": "ok", "backlog": "ok"},
        }
        assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}


async def test_readyz_is_503_while_the_dispatcher_is_stalled_and_200_once_it_moves(
    tmp_path: Path,
) -> None:
    async with service(tmp_path) as (app, base, (http, clock)):
        dispatcher = app.state.ctx.dispatcher
        stuck = asyncio.Event()
        release = asyncio.Event()
        original = dispatcher.run_once

        async def hanging_round() -> bool:
            stuck.set()
            await release.wait()
            result: bool = await original()
            return result

        dispatcher.run_once = hanging_round
        dispatcher.wake()
        await asyncio.wait_for(stuck.wait(), WAIT_S)
        clock.now += STALL_S + 1

        answer = await http.get(f"{base}/readyz")
        assert answer.status_code == 503
        body = answer.json()
        assert body["error"] == "not_ready"
        assert body["checks"]["dispatcher"] == "failing: stalled"
        assert body["checks"]["database"] == "ok"
        assert "dispatcher" in body["message"]

        del dispatcher.run_once
        release.set()

        async def ready() -> bool:
            return (await http.get(f"{base}/readyz")).status_code == 200

        await wait_for(ready)


async def test_readyz_is_503_when_the_oldest_pending_event_is_older_than_the_threshold(
    tmp_path: Path,
) -> None:
    async with service(tmp_path, ready_max_pending_age_s=300, lease_s=3600) as (
        app,
        base,
        (http, clock),
    ):
        target = app.state.ctx.dispatcher.target
        entered = asyncio.Event()
        gate = asyncio.Event()
        original = target.upsert_batch

        async def slow_crm(requests: list[Any]) -> list[Any]:
            entered.set()
            await gate.wait()
            result: list[Any] = await original(requests)
            return result

        target.upsert_batch = slow_crm
        await post(http, base, [event(1, "lead")], clock)
        await asyncio.wait_for(entered.wait(), WAIT_S)

        clock.now = T0 + 299
        assert (await readiness_after_jump(http, base)).status_code == 200
        clock.now = T0 + 301
        answer = await readiness_after_jump(http, base)
        assert answer.status_code == 503
        checks = answer.json()["checks"]
        assert checks["backlog"] == "failing: the oldest due event is 301s old"
        assert checks["dispatcher"] == "ok"
        scrape = Scrape((await http.get(f"{base}/metrics")).text)
        assert scrape.value("stagesync_oldest_pending_seconds") == 301
        assert scrape.value("stagesync_queue_depth", state="pending") == 1

        gate.set()

        async def ready() -> bool:
            return (await http.get(f"{base}/readyz")).status_code == 200

        await wait_for(ready)
        del target.upsert_batch


async def test_readyz_checks_only_the_database_and_the_dispatcher_by_default(
    tmp_path: Path,
) -> None:
    async with service(tmp_path) as (_, base, (http, _clock)):
        answer = await http.get(f"{base}/readyz")
        checks = {"database": "ok", "dispatcher": "ok"}
        assert answer.json() == {"status": "ready", "checks": checks}


async def test_readyz_ignores_an_old_backlog_when_the_threshold_is_0(tmp_path: Path) -> None:
    async with service(tmp_path, ready_max_pending_age_s=0, lease_s=3600) as (
        app,
        base,
        (http, clock),
    ):
        target = app.state.ctx.dispatcher.target
        gate = asyncio.Event()
        original = target.upsert_batch

        async def slow_crm(requests: list[Any]) -> list[Any]:
            await gate.wait()
            result: list[Any] = await original(requests)
            return result

        target.upsert_batch = slow_crm
        await post(http, base, [event(1, "lead")], clock)
        clock.now = T0 + 86_400
        answer = await readiness_after_jump(http, base)
        assert answer.status_code == 200
        assert "backlog" not in answer.json()["checks"]
        gate.set()


def test_the_example_alert_rules_in_the_docs_parse_and_use_only_real_metrics() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    rules = yaml.safe_load(block)["groups"][0]["rules"]
    assert len(rules) >= 5
    suffixes = ("_total", "_bucket", "_count", "_sum", "")
    known = {name + suffix for name in SPEC_METRICS for suffix in suffixes}
    for rule in rules:
        used = set(re.findall(r"\bstagesync_[a-z_]+", rule["expr"]))
        assert used <= known, (rule["alert"], used - known)
