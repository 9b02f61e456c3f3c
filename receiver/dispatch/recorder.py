"""Recording a round: errors become outcomes, outcomes go to the store, counted.

The dispatcher's claim loop and its target workers hand finished jobs here. Three
things happen to them:

- :meth:`RoundRecorder.fail` turns an error into each job's outcome with
  :func:`~receiver.sync.retry.classify`, the one place where an error becomes a retry,
  a delay or ``failed``; stored errors are scrubbed of configured secrets.
- :meth:`RoundRecorder.record` writes outcomes and contact states in one store call. A
  job whose lease ran out first is not written (another claimer may own the contact), nor
  one the store refuses because this owner lost its lease meanwhile; both are claimed
  again. Metrics and alerts see what was written.
- :meth:`RoundRecorder.give_up` drops jobs unrecorded, logging why.

Either way each job is ``release``-d: the dispatcher frees its in-flight slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from receiver.dispatch.work import ContactWork, breathe
from receiver.errors import AuthExpired, TokenRefused
from receiver.models import ContactUpdate, Outcome
from receiver.ops.logging import get_logger
from receiver.ops.metrics import Metrics
from receiver.ops.redaction import SecretScrubber
from receiver.store.base import EventStore
from receiver.sync.retry import RetryPolicy, classify

# The dispatcher's logger: these lines were always written under its name.
log = get_logger("receiver.dispatch.dispatcher")


class FailureObserver(Protocol):
    """Told of failures as they are recorded (the alerts); must not block."""

    def failed(self, events: Sequence[tuple[int, str | None]]) -> None:
        """Events that went to ``failed``, as ``(event id, error code)``."""
        ...

    def token_refused(self, api: str, code: str) -> None:
        """``api`` (``hubspot`` or ``target``) refused its token."""
        ...


class RoundRecorder:
    """Puts outcomes on finished jobs and records them; see the module docstring."""

    def __init__(
        self,
        *,
        store: EventStore,
        owner: str,
        retry: RetryPolicy,
        clock: Callable[[], float],
        release: Callable[[Sequence[ContactWork]], None],
        scrub: SecretScrubber,
        metrics: Metrics | None = None,
        alerts: FailureObserver | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.retry = retry
        self.clock = clock
        self.release = release
        self.scrub = scrub
        self.metrics = metrics
        self.alerts = alerts

    def fail(self, jobs: Sequence[ContactWork], exc: BaseException, api: str, streak: int) -> None:
        """Put ``exc``'s outcome on each job; ``streak`` counts ``api``'s rate limits in a row."""
        now = self.clock()
        if self.alerts is not None and isinstance(exc, AuthExpired | TokenRefused):
            self.alerts.token_refused(api, exc.code)
        for job in jobs:
            event = job.main_event
            assert event is not None
            outcome = classify(exc, event, event.attempt_floor, self.retry, now, streak)
            job.result.append(
                replace(
                    outcome,
                    stage=job.stage,
                    error_code=self.scrub.optional(outcome.error_code),
                    error_message=self.scrub.optional(outcome.error_message),
                )
            )
            log.warning(
                "dispatch_retry" if outcome.state == "retrying" else "dispatch_failed",
                event_id=event.id,
                contact_id=job.object_id,
                api=api,
                error_code=job.result[-1].error_code,
                counts_attempt=outcome.counts_attempt,
            )

    async def record(self, jobs: Sequence[ContactWork]) -> None:
        """Record the outcomes and contact states of finished ``jobs`` in one store call."""
        now = self.clock()
        lost = [j for j in jobs if now > j.lease_until]
        if lost:
            self.give_up(lost, "lease_expired_before_record")
            jobs = [j for j in jobs if not j.finished]
            if not jobs:
                return
        outcomes: list[Outcome] = []
        contacts: list[ContactUpdate] = []
        for n, job in enumerate(jobs, 1):
            outcomes += job.outcomes()
            if job.contact is not None:
                contacts.append(job.contact)
            await breathe(n)
        refused = await self.store.record(
            self.owner, outcomes, contacts, [j.object_id for j in jobs], now
        )
        if refused:
            jobs, outcomes = self._refused(jobs, outcomes, set(refused))
        self.release(jobs)
        if self.metrics is not None:
            self._observe(jobs, outcomes, now)
        if self.alerts is not None:
            self.alerts.failed(
                [(o.event_id, o.error_code) for o in outcomes if o.state == "failed"]
            )

    def give_up(self, jobs: Sequence[ContactWork], why: str) -> None:
        """Drop ``jobs`` unrecorded; their leases expire and they are claimed again."""
        jobs = [j for j in jobs if not j.finished]
        if jobs:
            log.warning(why, contacts=len(jobs), first_contact=jobs[0].object_id)
            self.release(jobs)

    def _refused(
        self, jobs: Sequence[ContactWork], outcomes: Sequence[Outcome], refused: set[int]
    ) -> tuple[list[ContactWork], list[Outcome]]:
        """Drop the jobs the store refused to record; the ones it recorded, and theirs."""
        lost = [j for j in jobs if j.object_id in refused]
        if not lost:
            return list(jobs), list(outcomes)
        log.warning(
            "record_refused_lease_lost", contacts=len(lost), first_contact=lost[0].object_id
        )
        if self.metrics is not None:
            self.metrics.lease_lost.inc(len(lost))
        self.release(lost)  # unrecorded: their events are due, and claimed again
        dropped = {e.id for j in lost for e in j.claimed.events}
        kept = [j for j in jobs if j.object_id not in refused]
        return kept, [o for o in outcomes if o.event_id not in dropped]

    def _observe(
        self, jobs: Sequence[ContactWork], outcomes: Sequence[Outcome], now: float
    ) -> None:
        assert self.metrics is not None
        received: dict[int, float] = {e.id: e.received_at for j in jobs for e in j.claimed.events}
        for o in outcomes:
            if not o.counts_attempt:  # a rate-limit delay or a wait: no outcome yet
                continue
            self.metrics.outcomes.labels(state=o.state, reason=o.reason or "").inc()
            if o.state == "retrying":
                self.metrics.retries.inc()
            elif o.state == "synced" and o.event_id in received:
                self.metrics.sync_seconds.observe(max(0.0, now - received[o.event_id]))
