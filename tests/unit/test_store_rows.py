"""The store-independent row helpers of ``receiver.store.rows``."""

from __future__ import annotations

from receiver.models import Outcome
from receiver.store.rows import history_rows


def test_history_rows_name_a_retry_and_leave_out_waits_that_are_no_attempt() -> None:
    outcomes = [
        Outcome(1, "synced"),
        Outcome(2, "retrying", error_code="http_503", error_message="Service unavailable"),
        Outcome(3, "retrying", error_code="rate_limited", counts_attempt=False),
        Outcome(4, "failed", error_code="INVALID_EMAIL", error_message="bad email"),
    ]
    assert history_rows(outcomes) == [
        (1, "synced", None, None),
        (2, "retry", "http_503", "Service unavailable"),
        (4, "failed", "INVALID_EMAIL", "bad email"),
    ]
