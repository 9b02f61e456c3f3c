"""The processes under test: the service and its variants, the bare endpoint, the minimal receiver.

All run as subprocesses of the bench's own Python (the venv's), so they use the same
uvicorn, event loop and HTTP parser. The environment handed to the service is rebuilt
from scratch for ``STAGESYNC_*`` keys, so a developer's own settings (a HubSpot token, a
config file) cannot change what is measured.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.tools import BenchError

HOST = "127.0.0.1"
WEBHOOK_PATH = "/webhooks/hubspot"
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
    env.update(extra)
    return env


@dataclass
class Server:
    """A running server process and the URL of its webhook endpoint."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _cpu_mark: float = field(default=0.0, repr=False)

    @property
    def url(self) -> str:
        """The webhook URL, exactly as the load generator calls it."""
        return f"http://{HOST}:{self.port}{WEBHOOK_PATH}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time of every thread of the process so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def native_modules(self) -> list[str]:
        """Which of uvloop and httptools the process has loaded (read from its maps)."""
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        return [name for name in ("uvloop", "httptools") if f"/{name}/" in maps]

    def wait_ready(self) -> None:
        """Poll ``/healthz`` until it answers 200, or raise with the server's log."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
                try:
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def stop(self) -> None:
        """Ask for a graceful shutdown (SIGINT, as Ctrl-C), kill after a timeout."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _start(name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path) -> Server:
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Server(name, process, port, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start_service(env: Mapping[str, str], workdir: Path, name: str = "service") -> Server:
    """``python -m receiver serve`` with ``env`` on a free port, once ``/healthz`` answers."""
    port = free_port()
    argv = [sys.executable, "-m", "receiver", "serve", "--host", HOST, "--port", str(port)]
    return _start(name, argv, dict(env), port, workdir)


# The service's variants: the module each runs as, instead of ``receiver``.
VARIANTS = {
    "service": "receiver",
    "ingest-only": "bench.ingest_only",  # dispatcher paused
    "checks-only": "bench.checks_only",  # dispatcher paused, nothing committed
}


@contextlib.contextmanager
def service(
    database_url: str, secret: str, workdir: Path, *, variant: str = "service"
) -> Iterator[Server]:
    """The real service (``python -m receiver serve``), dry-run target, warnings only.

    ``variant`` names one of :data:`VARIANTS`: the same command line and environment,
    run by a bench module that changes one thing first.
    """
    port = free_port()
    env = _clean_env(
        {
            "STAGESYNC_HUBSPOT_CLIENT_SECRET": secret,
            "STAGESYNC_DATABASE_URL": database_url,
            "STAGESYNC_LOG_LEVEL": "warning",
            "STAGESYNC_TARGET": "dry-run",
        }
    )
    argv = [sys.executable, "-m", VARIANTS[variant], "serve", "--host", HOST, "--port", str(port)]
    server = _start(variant, argv, env, port, workdir)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def bare(workdir: Path) -> Iterator[Server]:
    """The bare Starlette endpoint (``python -m bench.bare``)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare", "--host", HOST, "--port", str(port)]
    server = _start("bare", argv, _clean_env({}), port, workdir)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def minimal(workdir: Path, database: Path) -> Iterator[Server]:
    """The minimal receiver (``python -m bench.minimal``), storing into ``database``."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.minimal", "--host", HOST, "--port", str(port)]
    argv += ["--database", str(database)]
    server = _start("minimal", argv, _clean_env({}), port, workdir)
    try:
        yield server
    finally:
        server.stop()
