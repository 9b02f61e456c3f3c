"""The app's lifespan: a start that fails part-way leaves nothing running behind it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from receiver.web.app import create_app
from tests.conftest import build_settings


def _store_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("sqlite-")}


async def test_a_failed_start_closes_the_store_it_opened(
    tmp_path: Path,
) -> None:
    # Its worker threads are not daemons: left open, they kept the process from exiting
    # after uvicorn's "Application startup failed".
    before = _store_threads()

    def broken_target(*args: object, **kwargs: object) -> None:
        raise ValueError("the target cannot be built")

    app = create_app(build_settings(tmp_path), target_factory=broken_target)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be built"):
        async with app.router.lifespan_context(app):
            pass
    assert _store_threads() == before
