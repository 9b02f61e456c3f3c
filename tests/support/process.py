"""Run ``stagesync serve`` as a real uvicorn subprocess, for kill -9 and CLI tests.

Usage::

    env = service_env(tmp_path)                      # secret + SQLite file in tmp_path
    with ServiceProcess(env) as service:            # started, /healthz answered 200
        httpx.post(service.url("/webhooks/hubspot"), ...)
        service.kill()                               # SIGKILL, reaped
        service.start()                              # same port, same database
    print(service.output())                          # everything it wrote (JSON log lines)

``run_cli(env, "events", "--json")`` runs one other command in a subprocess. The child
gets only the ``STAGESYNC_*`` variables passed in ``env`` (plus PATH and the like), so
the test's own environment never leaks into it. Both run ``python -m receiver`` by
default, or the installed ``stagesync`` script with ``console_script=True``, in the
repository unless ``cwd`` says otherwise (the default ``sqlite:///stagesync.db`` is then
relative to ``cwd``, as after ``make run``).

In async tests, use :meth:`ServiceProcess.astart` when the test's own loop serves
something the child needs (a fake HubSpot via ``running_server``) or while senders are
running; :meth:`kill` and :meth:`stop` are quick and may be called directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from tests.conftest import SECRET
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


def service_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """``STAGESYNC_*`` variables for a service on ``tmp_path/stagesync.db`` (setting names)."""
    env = {
        "STAGESYNC_HUBSPOT_CLIENT_SECRET": SECRET,
        "STAGESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'stagesync.db'}",
        "STAGESYNC_LOG_FORMAT": "json",
    }
    env.update({"STAGESYNC_" + k.upper(): v for k, v in overrides.items()})
    return env


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The process environment without outside ``STAGESYNC_*`` values, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STAGESYNC_")}
    return {**base, "PYTHONUNBUFFERED": "1", **env}


def command(*args: str, console_script: bool = False) -> list[str]:
    """``python -m receiver ARGS``, or the installed ``stagesync ARGS``."""
    if console_script:
        return [str(Path(sys.executable).parent / "stagesync"), *args]
    return [sys.executable, "-m", "receiver", *args]


def run_cli(
    env: Mapping[str, str],
    *args: str,
    console_script: bool = False,
    cwd: Path = ROOT,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run one ``stagesync`` command to completion; output is captured as text."""
    return subprocess.run(
        command(*args, console_script=console_script),
        env=child_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServiceProcess:
    """One ``stagesync serve`` subprocess on a fixed loopback port; restartable.

    Output (standard output and error together) goes to a log file, never a pipe, so a
    chatty child can never block on a full pipe; :meth:`output` reads it back.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        console_script: bool = False,
        cwd: Path = ROOT,
        log_path: Path | None = None,
    ) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.port = port or free_port()
        self.args = list(args)
        self.console_script = console_script
        self.log_path = log_path or _default_log_path(self.env, self.cwd, self.port)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this service."""
        return self.base_url + path

    @property
    def running(self) -> bool:
        """The process exists and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    # -- start -----------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process without waiting for it to serve."""
        if self.running:
            raise RuntimeError("the service is already running")
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in _close_log)
        argv = command(
            "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args,
            console_script=self.console_script,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            argv, env=child_env(self.env), cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the process and return once ``/healthz`` answers 200."""
        self.spawn()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while not self._healthy(client):
                self._check_alive()
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"service did not start:\n{self.output()}")
                time.sleep(0.02)

    async def astart(self, within_s: float = START_TIMEOUT_S) -> None:
        """:meth:`start` without blocking the event loop."""
        self.spawn()
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                try:
                    if (await client.get(self.url("/healthz"))).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                self._check_alive()
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"service did not start:\n{self.output()}")
                await asyncio.sleep(0.02)

    def _healthy(self, client: httpx.Client) -> bool:
        try:
            return client.get(self.url("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            raise RuntimeError(f"service exited with {code} before serving:\n{self.output()}")

    # -- stop ------------------------------------------------------------------------

    def kill(self) -> int | None:
        """SIGKILL the process (no clean-up runs) and reap it; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=10)
        self._close_log()
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait for a clean shutdown, SIGKILL if it takes too long; exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        self._close_log()
        return self.proc.returncode

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """SIGKILL if running, then start again on the same port, env and database."""
        self.kill()
        self.start(timeout)

    def output(self) -> str:
        """Everything the process wrote so far, across restarts."""
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _default_log_path(env: Mapping[str, str], cwd: Path, port: int) -> Path:
    """Next to the SQLite file, or in ``cwd`` when that is not the repository."""
    url = env.get("STAGESYNC_DATABASE_URL", "")
    if url.startswith("sqlite:///"):
        folder = (cwd / url.removeprefix("sqlite:///")).parent
    elif cwd != ROOT:
        folder = cwd
    else:
        folder = Path(tempfile.gettempdir())
    return folder / f"stagesync-service-{port}.log"
