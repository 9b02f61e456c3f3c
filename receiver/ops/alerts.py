"""Alerts to ``ALERT_WEBHOOK_URL``: failures, refused tokens and an old backlog.

The dispatcher reports what happens through :meth:`Alerts.failed` and
:meth:`Alerts.token_refused`, which only add to in-memory tallies (never I/O, never a
wait), and a background task turns the tallies into Slack-compatible ``{"text": ...}``
POSTs: the first a few seconds (:data:`GATHER_S`) after something happened, so that a
burst is one message, then at most one every ``ALERT_INTERVAL_S``, summing what happened
meanwhile by error code. Another loop checks every :data:`BACKLOG_CHECK_S` seconds
whether the oldest due event waited longer than ``ALERT_BACKLOG_S``.

A delivery that fails is retried :data:`ATTEMPTS` times with a growing pause, then
logged and dropped. Messages carry event ids, counts and error codes only: never the
URL, a token, a contact field or a CRM's error message (which may echo contact values).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from receiver.ops.logging import get_logger

log = get_logger("receiver.ops.alerts")

GATHER_S = 5.0
BACKLOG_CHECK_S = 30.0
ATTEMPTS = 4
RETRY_BASE_S = 1.0
SAMPLE_IDS = 10
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class BacklogSource(Protocol):
    """What the backlog alert reads from the event store (any ``EventStore`` fits)."""

    async def oldest_open_received_at(
        self, due_at: float | None = None, *, in_flight: bool = True
    ) -> float | None:
        """``received_at`` of the oldest open event, counting only those due by ``due_at``
        (and, unless ``in_flight``, not leased then)."""
        ...


@dataclass
class Tally:
    """What happened since the last message."""

    failed: Counter[str] = field(default_factory=Counter)
    sample_ids: list[int] = field(default_factory=list)
    refused: dict[str, set[str]] = field(default_factory=dict)
    backlog_age_s: float | None = None

    def empty(self) -> bool:
        """True when there is nothing to say."""
        return not self.failed and not self.refused and self.backlog_age_s is None


def alert_text(tally: Tally, interval_s: float, backlog_s: float) -> str:
    """The message for ``tally``: counts, codes and ids only."""
    lines = []
    if tally.failed:
        total = sum(tally.failed.values())
        codes = ", ".join(f"{code} x{n}" for code, n in tally.failed.most_common())
        ids = ", ".join(str(i) for i in tally.sample_ids)
        lines.append(
            f"stagesync: {total} event{'s' if total != 1 else ''} failed"
            f" (at most one message per {interval_s:g} s): {codes}. Event ids: {ids}."
        )
    for api, refused in sorted(tally.refused.items()):
        lines.append(
            f"stagesync: the {api} refused its token ({', '.join(sorted(refused))});"
            " events wait and retry until it is fixed."
        )
    if tally.backlog_age_s is not None:
        lines.append(
            f"stagesync: the oldest due event has waited {tally.backlog_age_s:.0f} s,"
            f" over ALERT_BACKLOG_S ({backlog_s:g} s)."
        )
    return "\n".join(lines)


class Alerts:
    """Collects what to alert about and posts it; see the module docstring."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        url: str,
        store: BacklogSource,
        interval_s: float,
        backlog_s: float,
        clock: Callable[[], float] = time.time,
        gather_s: float = GATHER_S,
        backlog_check_s: float = BACKLOG_CHECK_S,
        retry_base_s: float = RETRY_BASE_S,
    ) -> None:
        self._http = http
        self._url = url
        self.store = store
        self.interval_s = interval_s
        self.backlog_s = backlog_s
        self.clock = clock
        self.gather_s = gather_s
        self.backlog_check_s = backlog_check_s
        self.retry_base_s = retry_base_s
        self._tally = Tally()
        self._wake = asyncio.Event()
        self._last_sent = -float("inf")
        self.sent = 0

    def __repr__(self) -> str:
        return "Alerts(url=[redacted])"

    # -- reports (called by the dispatcher: no I/O, no waiting) -------------------

    def failed(self, events: Sequence[tuple[int, str | None]]) -> None:
        """Events that went to ``failed``, as ``(event id, error code)``."""
        if not events:
            return
        for event_id, code in events:
            self._tally.failed[code or "unknown"] += 1
            if len(self._tally.sample_ids) < SAMPLE_IDS:
                self._tally.sample_ids.append(event_id)
        self._wake.set()

    def token_refused(self, api: str, code: str) -> None:
        """``api`` (``hubspot`` or ``target``) refused its token with ``code``."""
        name = "HubSpot API" if api == "hubspot" else "target CRM"
        self._tally.refused.setdefault(name, set()).add(code)
        self._wake.set()

    def backlog(self, age_s: float) -> None:
        """The oldest due event has waited ``age_s`` seconds, over the threshold."""
        previous = self._tally.backlog_age_s
        self._tally.backlog_age_s = max(age_s, previous or 0.0)
        self._wake.set()

    # -- background ---------------------------------------------------------------

    async def run(self) -> None:
        """Send and check until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._send_loop())
            group.create_task(self._backlog_loop())

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            spacing = self._last_sent + self.interval_s - time.monotonic()
            await asyncio.sleep(max(self.gather_s, spacing))
            self._wake.clear()
            tally, self._tally = self._tally, Tally()
            if tally.empty():
                continue
            self._last_sent = time.monotonic()
            await self.deliver(alert_text(tally, self.interval_s, self.backlog_s))

    async def _backlog_loop(self) -> None:
        while True:
            await asyncio.sleep(self.backlog_check_s)
            await self.check_backlog()

    async def check_backlog(self) -> None:
        """Report the backlog if the oldest due event waited over ``backlog_s``."""
        now = self.clock()
        try:
            # The SPEC's due events: an event in flight is the dispatcher's, not a backlog.
            oldest = await self.store.oldest_open_received_at(due_at=now, in_flight=False)
        except Exception as exc:
            log.warning("alert_backlog_check_failed", error=type(exc).__name__)
            return
        if oldest is not None and now - oldest > self.backlog_s:
            self.backlog(now - oldest)

    async def deliver(self, text: str) -> bool:
        """POST ``text``; retried, then logged (without the URL). True when delivered."""
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(self.retry_base_s * 2 ** (attempt - 1))
            try:
                response = await self._http.post(self._url, json={"text": text}, timeout=TIMEOUT)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
                continue
            if response.is_success:
                self.sent += 1
                log.info("alert_sent", attempts=attempt + 1)
                return True
            problem = f"http_{response.status_code}"
        log.error("alert_delivery_failed", attempts=ATTEMPTS, error=problem)
        return False
