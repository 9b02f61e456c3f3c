"""Bulk API 2.0 upsert jobs, for syncs too large for sObject Collections.

One job per object (and per ~90 MB of CSV): create it (``POST jobs/ingest``), upload the
CSV (``PUT .../batches``), close it (``PATCH`` state ``UploadComplete``), poll it with
backoff until ``JobComplete``, ``Failed`` or ``Aborted``, then read
``successfulResults`` and ``failedResults`` (and ``unprocessedrecords`` of a job that
did not complete). 100,000 records cost a few dozen calls instead of 500 collection
calls. Results come back in no particular order: each is matched to its record by the
external id column, and each error is classified as a collection record's is
(``sf__Error`` reads ``CODE:message``).

CSV is written with the :mod:`csv` module. An empty cell leaves a field alone in a Bulk
upsert, so a field one record lacks does not clear it on another; a value cleared in
HubSpot is sent as ``#N/A``, Bulk API's null.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from receiver.errors import PermanentError, TransientError, UpstreamError
from receiver.models import Kind
from receiver.targets.base import UpsertRequest, UpsertResult
from receiver.targets.http import json_or_none
from receiver.targets.salesforce.client import SalesforceClient
from receiver.targets.salesforce.errors import classify_error, response_error
from receiver.targets.salesforce.fields import OBJECTS, prepare_fields

#: CSV bytes per job: Salesforce takes 150 MB base64-encoded, about 100 MB raw.
MAX_JOB_BYTES = 90_000_000
#: Bulk API's null in CSV.
NULL = "#N/A"
DONE_STATES = frozenset({"JobComplete", "Failed", "Aborted"})


@dataclass(frozen=True, slots=True)
class BulkJob:
    """A finished job, as stagesync saw it."""

    id: str
    object: str
    state: str
    records: int
    failed: int


class BulkUpserts:
    """Runs Bulk API 2.0 upsert jobs through a client; see the module docstring."""

    def __init__(
        self,
        api: SalesforceClient,
        *,
        first_poll_s: float = 0.5,
        max_poll_s: float = 10.0,
        max_wait_s: float = 3600.0,
        max_job_bytes: int = MAX_JOB_BYTES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.first_poll_s = first_poll_s
        self.max_poll_s = max_poll_s
        self.max_wait_s = max_wait_s
        self.max_job_bytes = max_job_bytes
        self.sleep = sleep
        self.clock = clock
        self.jobs: list[BulkJob] = []  # every job run, newest last

    async def upsert(
        self, kind: Kind, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        """Upsert records of one kind; one result or error per request, in order.

        An error that stops a whole job (creating or uploading it) is given to each of
        its records, so one job's failure does not fail the records of another.
        """
        results: list[UpsertResult | UpstreamError] = []
        for chunk in self._chunks(kind, requests):
            try:
                results += await self._run(kind, chunk)
            except UpstreamError as exc:
                results += [exc] * len(chunk)
        return results

    def _chunks(
        self, kind: Kind, requests: Sequence[UpsertRequest]
    ) -> list[Sequence[UpsertRequest]]:
        chunks: list[Sequence[UpsertRequest]] = []
        start, size = 0, 0
        for index, request in enumerate(requests):
            # A rough size: the CSV writer adds quotes and separators on top.
            row = sum(len(str(k)) + len(str(v)) + 4 for k, v in request.fields.items()) + 32
            if size + row > self.max_job_bytes and index > start:
                chunks.append(requests[start:index])
                start, size = index, 0
            size += row
        if start < len(requests):
            chunks.append(requests[start:])
        return chunks

    async def _run(
        self, kind: Kind, requests: Sequence[UpsertRequest]
    ) -> list[UpsertResult | UpstreamError]:
        obj = OBJECTS[kind]
        field = self.api.external_id_field
        base = f"/services/data/{self.api.version}/jobs/ingest"
        created = await self.api.rest(
            "POST",
            base,
            {
                "object": obj,
                "externalIdFieldName": field,
                "contentType": "CSV",
                "operation": "upsert",
                "lineEnding": "LF",
            },
        )
        info = self._json(created, obj, 200, 201)
        job_id = info.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise TransientError("bad_response", f"Salesforce created a {obj} Bulk job with no id")
        uploaded = await self.api.rest(
            "PUT",
            f"{base}/{job_id}/batches",
            # In a thread: thousands of rows would hold the event loop (and webhook acks).
            content=await asyncio.to_thread(write_csv, kind, requests, field),
            headers={"Content-Type": "text/csv"},
        )
        if uploaded.status_code not in (200, 201):
            raise self._error(uploaded, obj)
        closed = await self.api.rest("PATCH", f"{base}/{job_id}", {"state": "UploadComplete"})
        self._json(closed, obj, 200)
        state, message = await self._wait(f"{base}/{job_id}", obj)
        answers: dict[str, UpsertResult | UpstreamError] = {}
        for row in await self._results(f"{base}/{job_id}/successfulResults/", obj):
            key = row.get(field)
            if key is not None and row.get("sf__Id"):
                created_flag = (row.get("sf__Created") or "").lower() == "true"
                answers[key] = UpsertResult(row["sf__Id"], created_flag)
        for row in await self._results(f"{base}/{job_id}/failedResults/", obj):
            key = row.get(field)
            if key is not None:
                answers[key] = bulk_error(row.get("sf__Error") or "", self.api.scrub)
        if state != "JobComplete":
            unprocessed = await self._results(f"{base}/{job_id}/unprocessedrecords/", obj)
            error: UpstreamError = (
                PermanentError("BULK_JOB_FAILED", self.api.scrub(message or "the job failed"))
                if state == "Failed"
                else TransientError("BULK_JOB_ABORTED", "the Bulk API job was aborted")
            )
            for row in unprocessed:
                key = row.get(field)
                if key is not None:
                    answers.setdefault(key, error)
        failed = sum(1 for a in answers.values() if isinstance(a, UpstreamError))
        self.jobs.append(BulkJob(job_id, obj, state, len(requests), failed))
        missing = TransientError(
            "bulk_result_missing", f"the {obj} Bulk job {job_id} gave no result for the record"
        )
        return [answers.get(r.hubspot_id, missing) for r in requests]

    async def _wait(self, path: str, obj: str) -> tuple[str, str | None]:
        """Poll the job with doubling delays until it is done; its state and message."""
        delay = self.first_poll_s
        deadline = self.clock() + self.max_wait_s
        while True:
            await self.sleep(delay)
            info = self._json(await self.api.rest("GET", path), obj, 200)
            state = info.get("state")
            if state in DONE_STATES:
                message = info.get("errorMessage")
                return str(state), message if isinstance(message, str) else None
            if self.clock() > deadline:
                raise TransientError(
                    "bulk_timeout", f"the {obj} Bulk job was not done within {self.max_wait_s} s"
                )
            delay = min(self.max_poll_s, delay * 2)

    async def _results(self, path: str, obj: str) -> list[dict[str, str]]:
        response = await self.api.rest("GET", path)
        if response.status_code != 200:
            raise self._error(response, obj)
        text = response.text
        return await asyncio.to_thread(lambda: list(csv.DictReader(io.StringIO(text))))

    def _json(self, response: httpx.Response, obj: str, *ok: int) -> dict[str, Any]:
        if response.status_code not in ok:
            raise self._error(response, obj)
        data = json_or_none(response)
        return data if isinstance(data, dict) else {}

    def _error(self, response: httpx.Response, obj: str) -> UpstreamError:
        return response_error(response, obj, self.api.external_id_field, self.api.scrub)


def write_csv(kind: Kind, requests: Sequence[UpsertRequest], external_id_field: str) -> bytes:
    """The job's CSV: the external id column, then every field any record carries."""
    rows = [
        prepare_fields(kind, r.fields, external_id_field=external_id_field, may_create=r.may_create)
        for r in requests
    ]
    columns = sorted({name for row in rows for name in row})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([external_id_field, *columns])
    for request, row in zip(requests, rows, strict=True):
        writer.writerow([request.hubspot_id, *(_cell(row, name) for name in columns)])
    return out.getvalue().encode()


def _cell(row: dict[str, Any], name: str) -> str:
    if name not in row:
        return ""  # left alone
    value = row[name]
    if value is None or value == "":
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def bulk_error(text: str, scrub: Callable[[str], str]) -> UpstreamError:
    """A ``failedResults`` row's ``sf__Error`` (``CODE:message[:fields] --``), classified."""
    code, _, rest = text.partition(":")
    message = rest.removesuffix("--").strip().rstrip(":").strip()
    if not code.strip() or not code.strip().replace("_", "").isalnum():
        return PermanentError("UNKNOWN_ERROR", scrub(text.strip() or "Salesforce gave no reason"))
    return classify_error(code.strip(), scrub(message or code.strip()))
