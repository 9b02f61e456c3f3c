"""``stagesync backfill`` and ``stagesync reconcile`` as subprocesses, beside a service
running in the test's process on the same SQLite file, against the fake HubSpot."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from tests.fakes.hubspot import create_fake_hubspot
from tests.integration.test_backfill import portal, service, synced_ids
from tests.support.process import run_cli
from tests.support.servers import running_server

SECRET_ENV = {"STAGESYNC_HUBSPOT_CLIENT_SECRET": "cli-test-secret"}


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**SECRET_ENV, "STAGESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    env.update({"STAGESYNC_" + k.upper(): v for k, v in extra.items()})
    return env


async def test_backfill_and_reconcile_without_a_token_exit_1_with_a_clear_message(
    tmp_path: Path,
) -> None:
    async with service(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", None):
        for command in ("backfill", "reconcile"):
            result = await asyncio.to_thread(run_cli, env_for(tmp_path), command)
            assert result.returncode == 1, command
            assert "STAGESYNC_HUBSPOT_ACCESS_TOKEN" in result.stderr
            assert "Traceback" not in result.stderr


async def test_backfill_wait_follows_the_job_to_its_counts(tmp_path: Path) -> None:
    fake = portal(1200, cap=400)
    wanted = synced_ids(fake)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with service(tmp_path, url, fake) as svc:
        env = env_for(
            tmp_path,
            hubspot_access_token=fake.token,
            hubspot_api_url=svc.ctx.settings.hubspot_api_url,
        )
        result = await asyncio.to_thread(
            run_cli, env, "backfill", "--stage", "lead", "--stage", "customer", "--wait"
        )
        again = await asyncio.to_thread(run_cli, env, "backfill", "--stage", "other")
    assert result.returncode == 0, result.stderr
    leads_and_customers = [
        i for i in wanted if fake.contacts[i]["lifecyclestage"] in ("lead", "customer")
    ]
    n = len(leads_and_customers)
    assert "backfill 1 started: stages lead, customer" in result.stdout
    assert re.search(
        rf"backfill 1 done: found {n}, queued {n}, synced {n}, skipped 0, failed 0", result.stdout
    ), result.stdout
    assert again.returncode == 1 and "in no sync that is on" in again.stderr


async def test_reconcile_runs_one_pass_in_the_cli_process(tmp_path: Path) -> None:
    fake = create_fake_hubspot(
        contacts={
            1: {"lifecyclestage": "lead", "email": "a@example.com"},
            2: {"lifecyclestage": "subscriber", "email": "b@example.com"},
        }
    )
    now_ms = int(time.time() * 1000)
    fake.touch(1, when_ms=now_ms - 1000)
    fake.touch(2, when_ms=now_ms - 1000)
    async with running_server(fake.app) as hubspot_url:
        env = env_for(tmp_path, hubspot_access_token=fake.token, hubspot_api_url=hubspot_url)
        # the CLI needs an existing database: create it as `stagesync serve` would
        async with service(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", None):
            pass
        first = await asyncio.to_thread(run_cli, env, "reconcile")
        second = await asyncio.to_thread(run_cli, env, "reconcile")
        status = await asyncio.to_thread(run_cli, env, "status", "--json")
        human = await asyncio.to_thread(run_cli, env, "status")
    assert first.returncode == 0, first.stderr
    assert "found 1 contact(s)" in first.stdout and "queued 1 " in first.stdout
    assert "queued 0 (1 already queued)" in second.stdout
    assert '"reconcile":{"last_run_at":' in status.stdout
    assert fake.search_calls == 2
    lines = human.stdout.splitlines()
    reconcile = next(line for line in lines if line.startswith("  reconcile:"))
    assert reconcile.endswith("found 1") and "last never" not in reconcile
    assert "  backfill running:   none" in lines


def test_check_config_says_whether_reconciliation_runs_and_refuses_a_negative_interval(
    tmp_path: Path,
) -> None:
    base = env_for(tmp_path)
    token = {"STAGESYNC_HUBSPOT_ACCESS_TOKEN": "pat-na1-abc"}
    runs = run_cli({**base, **token, "STAGESYNC_RECONCILE_INTERVAL_S": "600"}, "check-config")
    off = run_cli({**base, **token, "STAGESYNC_RECONCILE_INTERVAL_S": "0"}, "check-config")
    untoken = run_cli(base, "check-config")
    negative = run_cli({**base, "STAGESYNC_RECONCILE_INTERVAL_S": "-1"}, "check-config")
    assert "  reconcile:       every 600 s" in runs.stdout.splitlines()
    assert "  reconcile:       off (RECONCILE_INTERVAL_S=0)" in off.stdout.splitlines()
    assert "  reconcile:       off (needs the HubSpot token)" in untoken.stdout.splitlines()
    assert negative.returncode == 1
    assert "STAGESYNC_RECONCILE_INTERVAL_S" in negative.stderr
    assert "pat-na1-abc" not in runs.stdout + runs.stderr
