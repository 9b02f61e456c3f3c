"""Drive a URL with ``wrk`` and ``sign.lua``, and read back what ``done()`` printed."""

from __future__ import annotations

import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.tools import BenchError, ensure_wrk

SCRIPT = Path(__file__).resolve().parent / "sign.lua"
MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class Load:
    """One wrk run: how long, how many connections and threads, events per request."""

    duration_s: float
    connections: int
    threads: int
    batch: int
    timeout_s: float = 10.0


@dataclass(frozen=True)
class WrkResult:
    """What wrk measured; latencies in milliseconds."""

    load: Load
    duration_s: float
    requests: int
    status_errors: int  # answers >= 400
    socket_errors: int  # connect, read and write errors
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float  # CPU time wrk itself used

    @property
    def ok_requests(self) -> int:
        """Requests answered with a status below 400."""
        return self.requests - self.status_errors

    @property
    def requests_per_s(self) -> float:
        """Answered requests per second (errors included, as wrk counts them)."""
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def events_per_s(self) -> float:
        """Events in successfully answered requests, per second."""
        return self.ok_requests * self.load.batch / self.duration_s if self.duration_s else 0.0

    @property
    def clean(self) -> bool:
        """No error answers, no socket errors and no timeouts."""
        return not (self.status_errors or self.socket_errors or self.timeouts)

    def problems(self) -> str:
        """The errors wrk saw, for a person; empty when clean."""
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.status_errors, "error answers"),
                (self.socket_errors, "socket errors"),
                (self.timeouts, "timeouts"),
            )
            if n
        ]
        return ", ".join(parts)


def run_wrk(url: str, load: Load, secret: str, nonce: int, contacts: int = 0) -> WrkResult:
    """Run wrk against ``url`` for ``load`` with signed unique events, and parse its result.

    ``nonce`` (1000-8999) goes into every event id, so separate runs on one database never
    produce duplicates. ``contacts`` > 0 spreads events over that many contacts at
    random; 0 gives each event a new contact.
    """
    argv = [
        ensure_wrk(),
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={max(1, round(load.duration_s))}s",
        f"--timeout={max(1, round(load.timeout_s))}s",
        f"--script={SCRIPT}",
        url,
        "--",
        secret,
        str(load.batch),
        str(nonce),
        str(contacts),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix(MARKER))
    return WrkResult(
        load=load,
        duration_s=data["duration_us"] / 1e6,
        requests=data["requests"],
        status_errors=data["status_errors"],
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"],
        timeouts=data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        cpu_s=cpu_s,
    )
