"""The scripted :class:`~receiver.targets.base.Target` fake and its error helpers.

:class:`ScriptedTarget` answers from a script: whole-call errors, per-record errors, a
gate that holds calls, and counters of what it was asked. Import it from
:mod:`tests.fakes.doubles`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.errors import PermanentError, RateLimited, TransientError, UpstreamError
from receiver.models import Kind
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult


def transient(code: str = "http_503", retry_after: float | None = None) -> TransientError:
    """A transient error, as a 5xx or a timeout gives."""
    return TransientError(code, f"scripted {code}", retry_after=retry_after)


def permanent(code: str = "INVALID_FIELD", message: str = "scripted refusal") -> PermanentError:
    """A permanent error, as a validation error gives."""
    return PermanentError(code, message)


def rate_limited(retry_after: float | None = None) -> RateLimited:
    """A rate-limit answer."""
    return RateLimited("REQUEST_LIMIT_EXCEEDED", "scripted rate limit", retry_after=retry_after)


@dataclass(eq=False)
class ScriptedTarget:
    """A :class:`~receiver.targets.base.Target` that answers from a script.

    ``fail_calls(*errors)`` makes the next calls (upsert, batch or delete) raise those
    errors in turn; ``fail_record(id, *errors)`` makes the next upserts of one HubSpot id
    answer those, raised from ``upsert`` and returned in place from ``upsert_batch``.
    Anything unscripted succeeds and is kept in ``held``. While ``gate`` is set to an
    unset event, calls wait for it. ``active_per_id`` and ``max_active_per_id`` show
    whether two calls for one contact ever overlapped.
    """

    batch_size: int = 200
    latency_s: float = 0.0
    name: str = "scripted"
    supports_convert: bool = False
    one_kind_per_call: bool = False
    calls_are_metered: bool = True
    gate: asyncio.Event | None = None
    held: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[UpsertRequest] = field(default_factory=list)
    batches: list[list[UpsertRequest]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    calls: int = 0
    batch_calls: int = 0
    delete_calls: int = 0
    per_id: Counter[str] = field(default_factory=Counter)
    max_active_per_id: int = 0
    _call_errors: deque[UpstreamError] = field(default_factory=deque)
    _record_errors: dict[str, deque[UpstreamError]] = field(default_factory=dict)
    _active: Counter[str] = field(default_factory=Counter)

    def api_status(self) -> dict[str, Any] | None:
        """None: the script has no API allocation."""
        return None

    def default_mapping(self, kind: Kind) -> dict[str, str]:
        """Email and last name, plus the stage, for both kinds."""
        return {"Email": "email", "LastName": "lastname", "Stage": "lifecyclestage"}

    def fail_calls(self, *errors: UpstreamError) -> None:
        """The next calls raise ``errors``, one each."""
        self._call_errors.extend(errors)

    def fail_record(self, hubspot_id: int | str, *errors: UpstreamError) -> None:
        """The next upserts of ``hubspot_id`` answer ``errors``, one each."""
        self._record_errors.setdefault(str(hubspot_id), deque()).extend(errors)

    async def _enter(self, ids: Sequence[str]) -> None:
        self.calls += 1
        for hubspot_id in ids:
            self.per_id[hubspot_id] += 1
            self._active[hubspot_id] += 1
            self.max_active_per_id = max(self.max_active_per_id, self._active[hubspot_id])
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self._call_errors:
                raise self._call_errors.popleft()
        finally:
            for hubspot_id in ids:
                self._active[hubspot_id] -= 1

    def _one(self, request: UpsertRequest) -> UpsertResult | UpstreamError:
        errors = self._record_errors.get(request.hubspot_id)
        if errors:
            return errors.popleft()
        self.requests.append(request)
        key = (request.hubspot_id, request.kind)
        created = key not in self.held
        self.held[key] = {**self.held.get(key, {}), **request.fields}
        return UpsertResult(f"{request.kind}-{request.hubspot_id}", created)

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        """One record; a scripted error is raised."""
        await self._enter([request.hubspot_id])
        result = self._one(request)
        if isinstance(result, UpstreamError):
            raise result
        return result

    async def upsert_batch(
        self, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Many records; scripted per-record errors come back in place."""
        self.batch_calls += 1
        self.batches.append(list(requests))
        await self._enter([r.hubspot_id for r in requests])
        return [self._one(r) for r in requests]

    async def delete(self, hubspot_id: str, *, event: EventRef | None = None) -> int:
        """Drop both records of ``hubspot_id``."""
        self.delete_calls += 1
        await self._enter([hubspot_id])
        self.deleted.append(hubspot_id)
        keys = [k for k in self.held if k[0] == hubspot_id]
        for key in keys:
            del self.held[key]
        return len(keys)

    async def aclose(self) -> None:
        """Nothing to release."""

    def kinds(self, hubspot_id: int | str) -> set[str]:
        """The kinds held for one HubSpot id."""
        return {kind for (hid, kind) in self.held if hid == str(hubspot_id)}
