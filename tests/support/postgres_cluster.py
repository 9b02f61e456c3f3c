"""A throwaway PostgreSQL cluster for the test run, when none is configured.

With ``STAGESYNC_TEST_POSTGRES_DSN`` unset and the server programs installed (``initdb``,
``pg_ctl`` and ``postgres`` on ``PATH``, or under ``/usr/lib/postgresql/*/bin`` as
Debian's packages put them), the test session runs ``initdb`` in a temporary directory
and starts a server listening on a Unix socket in that directory only (no TCP port, so
nothing else on the machine can reach it or clash with it), with ``fsync`` off. The
bootstrap superuser is named after the user running the tests, with ``trust``
authentication on the socket, so the tests connect with no password. PostgreSQL refuses
to run as root: as root, ``initdb`` and the server run as the ``postgres`` user through
``runuser``, or the cluster is not started and the reason says so.
"""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = ("initdb", "pg_ctl", "postgres")
START_TIMEOUT_S = 60


def find_bin_dir() -> Path | None:
    """The directory holding PostgreSQL's server programs, or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    # Debian keeps them out of PATH, one directory per major version: newest first.
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(p), reverse=True
    )
    candidates += [Path(p) for p in versions]
    for directory in candidates:
        if all((directory / name).is_file() for name in PROGRAMS):
            return directory
    return None


def _version(path: str) -> tuple[int, ...]:
    number = Path(path).parent.name
    return tuple(int(p) for p in number.split(".") if p.isdigit())


@dataclass
class Cluster:
    """A running throwaway cluster; :meth:`stop` removes it."""

    bin_dir: Path
    root: Path
    run_as: str | None  # the OS user the server runs as, when not the current one
    dsn: str
    runuser: str = "runuser"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.run_as is not None:
            command = [self.runuser, "-u", self.run_as, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept) and delete its directory."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                  "-w", "stop")  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


class ClusterUnavailable(Exception):
    """No cluster could be started; the message says why, for the skip reasons."""


def start_cluster() -> Cluster:
    """Start a throwaway cluster; :class:`ClusterUnavailable` says why when it cannot."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise ClusterUnavailable(
            "no PostgreSQL server programs (initdb, pg_ctl, postgres) on PATH or under"
            " /usr/lib/postgresql/*/bin"
        )
    run_as = None
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None
    )
    if os.geteuid() == 0:
        if runuser is None:
            raise ClusterUnavailable("running as root, and runuser is missing to run as postgres")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterUnavailable(
                "running as root, which PostgreSQL refuses, and there is no postgres user"
            ) from None
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="stagesync-pg-"))
    user = getpass.getuser()
    cluster = Cluster(bin_dir, root, run_as, "", runuser or "runuser")
    try:
        if run_as is not None:
            account = pwd.getpwnam(run_as)
            os.chown(root, account.pw_uid, account.pw_gid)
        init = cluster._run(
            str(bin_dir / "initdb"), "-D", str(cluster.data_dir), "-U", user, "-A", "trust",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise ClusterUnavailable(f"initdb failed: {init.stderr.strip()[-300:]}")
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{root}' -p 5432"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=300 -c shared_buffers=64MB"
        )
        started = cluster._run(
            str(bin_dir / "pg_ctl"), "-D", str(cluster.data_dir), "-o", options,
            "-l", str(root / "server.log"), "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = (root / "server.log").read_text(errors="replace")[-500:]
            raise ClusterUnavailable(f"the server did not start: {started.stderr.strip()} {log}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    cluster.dsn = f"postgresql:///postgres?host={root}&port=5432"
    return cluster


class SessionCluster:
    """At most one throwaway cluster per test session, started on first need."""

    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.unavailable: str | None = None
        self.used: str | None = None  # what ran the tests, for the summary

    def dsn(self) -> str | None:
        """The cluster's DSN, starting it the first time; None when it cannot start."""
        if self.cluster is None and self.unavailable is None:
            try:
                self.cluster = start_cluster()
            except ClusterUnavailable as exc:
                self.unavailable = str(exc)
            else:
                who = f", as {self.cluster.run_as}" if self.cluster.run_as else ""
                self.used = f"a throwaway cluster ({self.cluster.bin_dir}{who})"
        return self.cluster.dsn if self.cluster is not None else None

    def stop(self) -> None:
        """Stop and remove the cluster, if one was started."""
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


session_cluster = SessionCluster()
