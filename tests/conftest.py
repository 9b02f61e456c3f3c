"""Shared fixtures: clean settings environment, settings factory, signed requests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.settings import Settings, load_settings

SECRET = "test-client-secret-0123456789"


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
