"""Status-class labels of ``stagesync_upstream_calls_total``."""

from __future__ import annotations

import pytest

from receiver.ops.metrics import status_class


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "2xx"), (204, "2xx"), (404, "4xx"), (429, "4xx"), (503, "5xx"), (None, "error")],
)
def test_http_statuses_map_to_the_spec_labels(status: int | None, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize("status", [100, 300, 302, 600])
def test_statuses_outside_the_spec_labels_count_as_error(status: int) -> None:
    assert status_class(status) == "error"
