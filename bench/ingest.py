"""Ingest: signed webhook batches against the service and the bare endpoint, side by side.

For each load (events per request x connections) the bare endpoint, the minimal receiver
(:mod:`bench.minimal`) and the service's request path without its commit
(:mod:`bench.checks_only`), those three for single events only, and then the service on
each backend run back to back, each in a fresh process with a fresh database: a
warm-up, then the measured run. Reported per run: answered requests/s, acknowledged
events/s, wrk's ack latency p50/p99, the service's rate as a share of the bare
endpoint's (single-event requests), the CPU the server and wrk used, and whether the
database holds every acknowledged event afterwards.

``--rounds N`` runs that sequence N times per load, so the servers alternate and each
share of bare is measured against the bare run of its own round. A row then gives the
median of each figure over the rounds, judges the goal on those medians, and shows the
range of the goal's own figure (share of bare, or p99 for batches of 100): on a shared
machine one round can land in a slow moment, and a median of interleaved rounds says
more than any single run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench import minimal, servers
from bench.backends import Backend, SQLiteBackend, backends_for
from bench.report import Row
from bench.tools import ensure_py_spy
from bench.wrk import Load, WrkResult, run_wrk

NAME = "ingest"
DEFAULT = True

# Issue 2's targets on a 2-core machine.
P99_MS_MAX = 50.0  # batches of 100 at concurrency 10
EVENTS_PER_S_MIN = 30_000.0  # batches of 100
BARE_SHARE_MIN = 0.30  # single-event requests, service req/s over bare req/s
BARE_SHARE_AIM = 0.45
# Rows that are points of comparison, not the service: no goal is judged on them.
REFERENCES = ("bare", "minimal", "checks-only")
DEFAULT_CONTACTS = 100_000


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of this scenario."""
    group = parser.add_argument_group("ingest")
    group.add_argument(
        "--batches", type=_ints, default=[1, 100], help="events per request (default 1,100)"
    )
    group.add_argument(
        "--connections",
        type=_ints,
        default=[10, 50],
        help="concurrent connections, HubSpot's default is 10 (default 10,50)",
    )
    group.add_argument(
        "--contacts",
        type=int,
        default=DEFAULT_CONTACTS,
        help="spread events over this many contacts at random; 0: a new contact per event"
        f" (default {DEFAULT_CONTACTS:,})",
    )
    group.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each load this many times, servers interleaved, and report medians (default 1)",
    )
    group.add_argument(
        "--no-minimal",
        dest="minimal",
        action="store_false",
        help="skip the minimal receiver (a reference point, single events only)",
    )
    group.add_argument(
        "--no-checks-only",
        dest="checks_only",
        action="store_false",
        help="skip the service's request path without a commit (single events only)",
    )
    group.add_argument(
        "--no-ingest-only",
        dest="ingest_only",
        action="store_false",
        help="skip the runs of the service with its dispatcher paused",
    )


class _Measurement:
    """Warm-up and measured wrk runs on one server, with the server's CPU time."""

    def __init__(
        self,
        server: servers.Server,
        load: Load,
        args: argparse.Namespace,
        closed: Callable[[], int] | None = None,
    ) -> None:
        warm = Load(args.warmup, load.connections, load.threads, load.batch)
        nonces = random.sample(range(1000, 9000), 2)
        contacts = args.contacts
        self.warm = (
            run_wrk(server.url, warm, args.secret, nonces[0], contacts) if args.warmup else None
        )
        closed_before = closed() if closed else 0
        cpu_before = server.cpu_seconds()
        profiler = _start_profiler(server, load, args)
        self.main = run_wrk(server.url, load, args.secret, nonces[1], contacts)
        # Read at once: the dispatcher goes on draining what the run left behind.
        self.closed_per_s = (
            (closed() - closed_before) / self.main.duration_s if closed is not None else None
        )
        if profiler is not None:
            profiler.wait()
        self.server_cpu = (server.cpu_seconds() - cpu_before) / self.main.duration_s
        self.native = server.native_modules()
        self.check = "-"  # the stored-events check, set once the server has stopped

    @property
    def runs(self) -> list[WrkResult]:
        return [r for r in (self.warm, self.main) if r is not None]


def _start_profiler(
    server: servers.Server, load: Load, args: argparse.Namespace
) -> subprocess.Popen[bytes] | None:
    if not args.profile:
        return None
    out = Path(args.profile) / f"{server.name}-b{load.batch}-c{load.connections}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [ensure_py_spy(), "record", "--nonblocking", "--threads", "--output", str(out)]
    argv += ["--duration", str(max(1, round(load.duration_s) - 1)), "--pid", str(server.pid)]
    print(f"bench: profiling {server.name} into {out}", file=sys.stderr)
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stored_check(stored: int, m: _Measurement, batch: int) -> str:
    """Every acknowledged event is stored; at most the requests in flight at wrk's end
    (answered after wrk stopped counting) or timed out may add more."""
    acked = sum(r.ok_requests for r in m.runs) * batch
    slack = sum(r.load.connections + r.timeouts + r.socket_errors for r in m.runs) * batch
    if acked <= stored <= acked + slack:
        return "ok"
    return f"FAIL: {stored} stored, {acked} acked"


@dataclass
class _Entry:
    """One round of one server: its measurement and its figures relative to others."""

    m: _Measurement
    share: float | None  # req/s over the same round's bare endpoint
    vs_sqlite: float | None  # events/s over the same round's SQLite service


def _goal(load: Load, p99_ms: float, events_per_s: float, share: float | None) -> str:
    if load.batch == 1 and share is not None:
        verdict = "ok" if share >= BARE_SHARE_MIN else "MISS"
        aim = "" if share >= BARE_SHARE_AIM else f", aim {BARE_SHARE_AIM:.0%}"
        return f"{verdict} (>= {BARE_SHARE_MIN:.0%} of bare{aim})"
    if load.batch == 100 and load.connections == 10:
        p99 = "ok" if p99_ms < P99_MS_MAX else "MISS"
        rate = "ok" if events_per_s >= EVENTS_PER_S_MIN else "MISS"
        return f"p99 < {P99_MS_MAX:.0f} ms {p99}, >= {EVENTS_PER_S_MIN:,.0f} ev/s {rate}"
    return ""


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _spread(entries: list[_Entry]) -> str:
    """The range of the goal's own figure over the rounds."""
    shares = [e.share for e in entries if e.share is not None]
    if shares:
        return f"{len(entries)}: {min(shares):.0%}-{max(shares):.0%}"
    runs = [e.m.main for e in entries]
    if runs[0].load.batch == 1:  # the bare endpoint: its rate is what the shares divide
        rates = [r.requests_per_s for r in runs]
        return f"{len(entries)}: {min(rates):,.0f}-{max(rates):,.0f} req/s"
    p99s = [r.p99_ms for r in runs]
    return f"{len(entries)}: p99 {min(p99s):.1f}-{max(p99s):.1f} ms"


def _row(target: str, entries: list[_Entry]) -> Row:
    """One row: the figures of one round, or the medians of several."""
    runs = [e.m.main for e in entries]
    load = runs[0].load
    share = _median([e.share for e in entries])
    vs_sqlite = _median([e.vs_sqlite for e in entries])
    p99 = statistics.median(r.p99_ms for r in runs)
    events_per_s = statistics.median(r.events_per_s for r in runs)
    problems = sorted({p for r in runs if (p := r.problems())})
    checks = [e.m.check for e in entries if e.m.check != "ok"]
    row: Row = {
        "server": target,
        "batch": load.batch,
        "conns": load.connections,
        "req/s": statistics.median(r.requests_per_s for r in runs),
        "events/s": events_per_s,
        "p50 ms": statistics.median(r.p50_ms for r in runs),
        "p99 ms": p99,
        "vs bare": f"{share:.0%}" if share is not None else None,
        "vs sqlite": f"{vs_sqlite:.0%}" if vs_sqlite is not None else None,
        "synced/s": _median([e.m.closed_per_s for e in entries]),
        "srv cpu": f"{statistics.median(e.m.server_cpu for e in entries):.0%}",
        "wrk cpu": f"{statistics.median(r.cpu_s / r.duration_s for r in runs):.0%}",
        "errors": "; ".join(problems) or "-",
        "stored": checks[0] if checks else entries[0].m.check,
        "goal": (_goal(load, p99, events_per_s, share) if target not in REFERENCES else None),
    }
    if len(entries) > 1:
        row["rounds"] = _spread(entries)
    return row


def _run_minimal(load: Load, args: argparse.Namespace) -> _Measurement:
    database = Path(args.workdir) / f"minimal-{random.randrange(1 << 30)}.db"
    try:
        with servers.minimal(args.workdir, database) as server:
            m = _Measurement(server, load, args)
        m.check = _stored_check(minimal.count_stored(str(database)), m, load.batch)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    return m


def _run_service(
    backend: Backend, load: Load, args: argparse.Namespace, variant: str = "service"
) -> _Measurement:
    url = backend.fresh_url()
    try:
        before = backend.count_events(url)
        with servers.service(url, args.secret, args.workdir, variant=variant) as server:
            before = max(before, backend.count_events(url))
            dispatching = variant == "service"
            closed = partial(backend.count_closed, url) if dispatching else None
            m = _Measurement(server, load, args, closed)
        stored = backend.count_events(url) - before
    finally:
        backend.drop(url)
    # checks-only commits nothing by design: there is nothing to check.
    m.check = "-" if variant == "checks-only" else _stored_check(stored, m, load.batch)
    return m


def _round(
    load: Load, args: argparse.Namespace, backends: list[Backend], out: dict[str, list[_Entry]]
) -> None:
    """Every server once on ``load``, in order; each one's entry goes to ``out[name]``."""
    label = f"batch={load.batch} conns={load.connections}"
    bare_rps = None
    if load.batch == 1:
        print(f"bench: ingest bare {label}", file=sys.stderr)
        with servers.bare(args.workdir) as server:
            m = _Measurement(server, load, args)
        bare_rps = m.main.requests_per_s
        out.setdefault("bare", []).append(_Entry(m, None, None))
        if args.minimal:
            print(f"bench: ingest minimal {label}", file=sys.stderr)
            m = _run_minimal(load, args)
            out.setdefault("minimal", []).append(_Entry(m, m.main.requests_per_s / bare_rps, None))
        if args.checks_only:
            print(f"bench: ingest checks-only {label}", file=sys.stderr)
            # It writes nothing, so any backend would do; its patch is on the SQLite store.
            scratch = SQLiteBackend(Path(args.workdir), name="checks-only")
            m = _run_service(scratch, load, args, "checks-only")
            share = m.main.requests_per_s / bare_rps
            out.setdefault("checks-only", []).append(_Entry(m, share, None))
    for variant in ["service", "ingest-only"] if args.ingest_only else ["service"]:
        sqlite_eps = None
        for backend in backends:
            name = backend.name + ("" if variant == "service" else f" {variant}")
            print(f"bench: ingest {name} {label}", file=sys.stderr)
            m = _run_service(backend, load, args, variant)
            _warn_without_fast_paths(m)
            share = m.main.requests_per_s / bare_rps if bare_rps else None
            vs_sqlite = None
            if backend.name == "sqlite":
                sqlite_eps = m.main.events_per_s
            elif sqlite_eps:
                vs_sqlite = m.main.events_per_s / sqlite_eps
            out.setdefault(name, []).append(_Entry(m, share, vs_sqlite))


def run(args: argparse.Namespace) -> list[Row]:
    """Measure every load on the bare endpoint (single events) and on each backend."""
    if args.rounds < 1:
        raise SystemExit("bench: --rounds must be at least 1")
    backends = backends_for(args)
    rows: list[Row] = []
    for batch in args.batches:
        for conns in args.connections:
            load = Load(args.duration, conns, args.threads, batch)
            entries: dict[str, list[_Entry]] = {}
            for _ in range(args.rounds):
                _round(load, args, backends, entries)
            rows.extend(_row(name, server_entries) for name, server_entries in entries.items())
    return rows


_warned: list[bool] = []


def _warn_without_fast_paths(m: _Measurement) -> None:
    if not _warned and set(m.native) != {"uvloop", "httptools"}:
        _warned.append(True)
        print(f"bench: the service runs without uvloop/httptools (loaded: {m.native})")
