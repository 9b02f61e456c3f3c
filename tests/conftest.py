"""Shared fixtures: clean settings environment, settings factory, signed requests."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.settings import Settings
from receiver.settings_loading import load_settings
from tests.support.postgres_cluster import session_cluster

SECRET = "test-client-secret-0123456789"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the throwaway PostgreSQL cluster, if the session started one."""
    session_cluster.stop()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """One line per reason tests were skipped for, and where PostgreSQL tests ran."""
    if session_cluster.used is not None:
        terminalreporter.write_line(f"stagesync: PostgreSQL tests ran on {session_cluster.used}")
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"stagesync: {count} test(s) skipped: {reason}")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STAGESYNC_* variable from the outside leaks into a test."""
    for key in list(os.environ):
        if key.startswith("STAGESYNC_") and key != "STAGESYNC_TEST_POSTGRES_DSN":
            monkeypatch.delenv(key)
    yield


def build_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on a fresh SQLite file in ``tmp_path``, with ``overrides`` (setting names)."""
    env = {
        "STAGESYNC_HUBSPOT_CLIENT_SECRET": SECRET,
        "STAGESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'stagesync.db'}",
        "STAGESYNC_LOG_FORMAT": "json",
    }
    for key, value in overrides.items():
        if isinstance(value, list | tuple):
            value = ",".join(value)
        env["STAGESYNC_" + key.upper()] = str(value)
    return load_settings(None, env)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings on a temporary SQLite database."""
    return build_settings(tmp_path)
