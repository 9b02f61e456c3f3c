"""Backfill of a large portal: wall time, HubSpot calls, peak RSS, webhook acks beside it.

The fake HubSpot (in the bench's process) holds ``--backfill-contacts`` contacts (100,000
by default), 60 % of them in synced stages; the real service runs as a subprocess with a
token and the dry-run target. Per backend:

1. a paced webhook load (:mod:`bench.paced`, ``--backfill-rate`` requests a second of 10
   new contacts each, for ``--duration`` seconds) on the idle service: the ack p99 without
   a backfill;
2. ``POST /admin/backfill`` and the same load at once beside it, then wait until the job
   is done and every event is processed: wall time from the start to the last sync;
3. every contact's modification time bumped with nothing else changed, and one
   ``stagesync reconcile`` pass: the events it queues must all end ``unchanged``, with
   no upsert (the dry-run records keep their upsert times).

Reported: HubSpot calls (searches and reads) against the bound ``ceil(N/100) + 2`` for
the N contacts found, the service's peak RSS (``VmHWM``), and both ack p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.backends import Backend, backends_for
from bench.e2e import service_env, settle
from bench.report import Row
from bench.tools import BenchError, ensure_py_spy
from receiver.store.factory import make_store
from tests.fakes.hubspot import DEFAULT_TOKEN, FakeHubSpot
from tests.fakes.salesforce import FakeSalesforce
from tests.support.servers import running_server

NAME = "backfill"
DEFAULT = False
ADMIN = "bench-admin-token-0123456789abcdef"
# Six of every ten contacts in synced stages (the default lead and contact stages).
STAGES = ("lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
          "evangelist", "subscriber", "other", "subscriber", "other")  # fmt: skip
JOB_TIMEOUT_S = 1800.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("backfill")
    group.add_argument(
        "--backfill-contacts", type=int, default=100_000, help="contacts in the portal (100000)"
    )
    group.add_argument(
        "--backfill-rate", type=float, default=20.0, help="webhook requests per second (20)"
    )
    group.add_argument(
        "--backfill-hubspot-latency", type=float, default=0.05, help="fake HubSpot answer time, s"
    )
    group.add_argument(
        "--backfill-targets",
        default="dry-run",
        help="dry-run,salesforce: the targets to run with (default dry-run)",
    )
    group.add_argument(
        "--backfill-sf-latency", type=float, default=0.15, help="fake Salesforce answer time, s"
    )


def _portal(n: int, latency_s: float) -> FakeHubSpot:
    contacts = {
        i: {
            "lifecyclestage": STAGES[i % len(STAGES)],
            "email": f"c{i}@example.com",
            "firstname": f"First{i}",
            "lastname": f"Last{i}",
            "lastmodifieddate": "2024-01-01T00:00:00.000Z",
        }
        for i in range(1, n + 1)
    }
    return FakeHubSpot(contacts=contacts, latency_s=latency_s)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _job_done(http: httpx.AsyncClient, base: str, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    headers = {"Authorization": f"Bearer {ADMIN}"}
    while True:
        doc: dict[str, Any] = (
            await http.get(f"{base}/admin/backfills/{job_id}", headers=headers)
        ).json()
        if doc["state"] != "running":
            if doc["state"] != "done":
                raise BenchError(f"backfill ended {doc['state']}: {doc.get('error')}")
            return doc
        if time.monotonic() > deadline:
            raise BenchError(f"backfill not done after {JOB_TIMEOUT_S:.0f} s: {doc}")
        await asyncio.sleep(0.25)


async def _upsert_times(url: str) -> dict[str, float]:
    store = make_store(url)
    await store.open()
    try:
        return {r.hubspot_id: r.upserted_at for r in await store.list_records()}
    finally:
        await store.close()


def _paced(url: str, args: argparse.Namespace, first_contact: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.paced", url, args.secret, str(args.backfill_rate),
            str(args.duration), str(first_contact)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=servers.ROOT)
    if done.returncode != 0:
        raise BenchError(f"the paced load failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise BenchError(f"the paced load got {result['errors']} error answers")
    return result


def _profiler(
    server: servers.Server, args: argparse.Namespace, name: str
) -> subprocess.Popen[bytes] | None:
    # The service's stacks while the paced load runs: a flame graph per phase.
    if not args.profile:
        return None
    out = Path(args.profile) / f"{name}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [ensure_py_spy(), "record", "--nonblocking", "--output", str(out)]
    argv += ["--duration", str(max(1, round(args.duration))), "--pid", str(server.pid)]
    print(f"bench: profiling the service into {out}", file=sys.stderr)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sf_calls(salesforce: FakeSalesforce | None) -> int:
    if salesforce is None:
        return 0
    return sum(salesforce.calls.values())  # collections and Bulk API jobs alike


async def _measure(backend: Backend, args: argparse.Namespace, target: str) -> Row:
    n = args.backfill_contacts
    fake = _portal(n, args.backfill_hubspot_latency)
    salesforce = FakeSalesforce(latency_s=args.backfill_sf_latency) if target != "dry-run" else None
    # In a thread: the PostgreSQL backend runs its own event loop to create the database.
    url = await asyncio.to_thread(backend.fresh_url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            hubspot_url = await stack.enter_async_context(running_server(fake.app))
            extra: dict[str, str] = {}
            if salesforce is not None:
                sf_url = await stack.enter_async_context(running_server(salesforce.app))
                extra = {
                    "target": "salesforce",
                    "salesforce_instance_url": sf_url,
                    "salesforce_access_token": salesforce.access_token,
                }
            env = service_env(
                url,
                args.secret,
                hubspot_access_token=DEFAULT_TOKEN,
                hubspot_api_url=hubspot_url,
                admin_token=ADMIN,
                reconcile_interval_s="0",
                **extra,
            )
            server = await asyncio.to_thread(servers.start_service, env, args.workdir, "backfill")
            base = server.url.removesuffix(servers.WEBHOOK_PATH)
            try:
                async with httpx.AsyncClient(timeout=60) as http:
                    # 1. the webhook load alone
                    profiler = _profiler(server, args, f"backfill-{backend.name}-alone")
                    quiet = await asyncio.to_thread(_paced, server.url, args, 50_000_000)
                    if profiler is not None:
                        await asyncio.to_thread(profiler.wait)
                    await settle(http, base, 0)
                    reads_before = fake.batch_read_calls
                    target_before = _sf_calls(salesforce)
                    # 2. the backfill, with the same load beside it
                    started = time.monotonic()
                    answer = await http.post(
                        f"{base}/admin/backfill", headers={"Authorization": f"Bearer {ADMIN}"}
                    )
                    if answer.status_code != 202:
                        raise BenchError(f"backfill answered {answer.status_code}: {answer.text}")
                    job_id = answer.json()["id"]
                    profiler = _profiler(server, args, f"backfill-{backend.name}-beside")
                    beside = asyncio.create_task(
                        asyncio.to_thread(_paced, server.url, args, 60_000_000)
                    )
                    job = await _job_done(http, base, job_id)
                    job_s = time.monotonic() - started
                    busy = await beside
                    if profiler is not None:
                        await asyncio.to_thread(profiler.wait)
                    status = await settle(http, base, 0, timeout_s=JOB_TIMEOUT_S)
                    wall_s = time.monotonic() - started
                    webhook_reads = fake.batch_read_calls - reads_before
                    target_calls = _sf_calls(salesforce) - target_before
                    # 3. an unchanged portal, reconciled
                    upserted = await _upsert_times(url)
                    target_before = _sf_calls(salesforce)
                    stamp = int(time.time() * 1000) - 1000
                    for object_id in fake.contacts:
                        fake.touch(object_id, when_ms=stamp)
                    done = await asyncio.to_thread(
                        subprocess.run,
                        [sys.executable, "-m", "receiver", "reconcile"],
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    if done.returncode != 0:
                        raise BenchError(f"stagesync reconcile failed: {done.stderr}")
                    status = await settle(http, base, 0, timeout_s=JOB_TIMEOUT_S)
                    unchanged = status["skipped_by_reason"].get("unchanged", 0)
                    again = await _upsert_times(url)
                    reconcile_calls = _sf_calls(salesforce) - target_before
                    rss = _peak_rss_mb(server.pid)
            finally:
                await asyncio.to_thread(server.stop)
    finally:
        await asyncio.to_thread(backend.drop, url)
    found = job["found"]
    bound = math.ceil(found / 100) + 2
    # the dry-run target's upserts show as changed upsert times; Salesforce's as calls
    reupserted = sum(1 for k, v in again.items() if upserted.get(k) != v) + reconcile_calls
    return {
        "backend": backend.name,
        "target": target,
        "contacts": n,
        "found": found,
        "job s": job_s,
        "wall s": wall_s,
        "synced/s": found / wall_s,
        "search calls": job["hubspot_calls"],
        "bound": bound,
        "batch reads (webhooks)": webhook_reads,
        "target calls/contact": f"{target_calls / found:.4f}" if salesforce else None,
        "peak RSS MB": rss,
        "ack p99 ms alone": quiet["p99_ms"],
        "ack p99 ms beside": busy["p99_ms"],
        "ratio": busy["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] else None,
        "reconcile unchanged": unchanged,
        "reconcile upserts": reupserted,
    }


def run(args: argparse.Namespace) -> list[Row]:
    """The backfill of a large portal, per backend."""
    rows: list[Row] = []
    targets = [t.strip() for t in args.backfill_targets.split(",") if t.strip()]
    if not targets or set(targets) - {"dry-run", "salesforce"}:
        raise BenchError(f"--backfill-targets takes dry-run and salesforce, not {targets}")
    for backend, target in ((b, t) for b in backends_for(args) for t in targets):
        row = asyncio.run(_measure(backend, args, target))
        print(
            f"bench: backfill {backend.name} {target}: {row['found']} contacts"
            f" in {row['wall s']:.1f} s,"
            f" {row['search calls']} search calls (bound {row['bound']}),"
            f" ack p99 {row['ack p99 ms alone']:.1f} -> {row['ack p99 ms beside']:.1f} ms",
            file=sys.stderr,
        )
        rows.append(row)
    return rows
