"""Install what the bench needs, on first use: ``wrk`` (Debian package) and ``py-spy``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


class BenchError(RuntimeError):
    """The bench cannot run or a check failed; the message says why."""


def _apt(*args: str) -> bool:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return False
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        [*prefix, "apt-get", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return done.returncode == 0


def ensure_wrk() -> str:
    """The path of ``wrk``, installing Debian's package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise BenchError("wrk is missing and there is no apt-get to install it; install wrk")
    print("bench: installing wrk (apt-get install -y wrk)", file=sys.stderr)
    if not _apt("install", "-y", "-q", "wrk"):
        _apt("update", "-q")
        _apt("install", "-y", "-q", "wrk")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("could not install wrk with apt-get; install it and run again")
    return found


def ensure_py_spy() -> str:
    """The path of ``py-spy`` next to this Python, pip-installing it when missing."""
    local = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.path.exists(local):
        return local
    found = shutil.which("py-spy")
    if found:
        return found
    print("bench: installing py-spy into the venv (pip install py-spy)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    if not os.path.exists(local):
        raise BenchError("pip installed py-spy but it is not next to this Python")
    return local
