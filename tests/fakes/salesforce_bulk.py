"""Bulk API 2.0 ingest jobs for the fake Salesforce org.

``POST .../jobs/ingest`` creates an upsert job (``Open``), ``PUT .../batches`` takes its
CSV once (``201``), ``PATCH`` with ``UploadComplete`` closes it, and ``GET`` answers
``InProgress`` for ``polls_before_done`` polls before the records are applied, each as the
fake's upserts are (required fields, validation rules, converted Leads), and the job is
``JobComplete``. ``successfulResults/`` (``sf__Id``, ``sf__Created``), ``failedResults/``
(``sf__Id``, ``sf__Error``) and ``unprocessedrecords/`` answer CSV with the original
columns, in reverse order, since Salesforce promises no order. ``fail_next_job`` makes
the next job end ``Failed`` with nothing processed.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from tests.fakes.salesforce import FakeSalesforce

NULL = "#N/A"


@dataclass
class FakeJob:
    """One ingest job."""

    id: str
    object: str
    external_id_field: str
    state: str = "Open"
    csv: str | None = None
    polls: int = 0
    succeeded: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    unprocessed: list[dict[str, str]] = field(default_factory=list)
    error_message: str | None = None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "operation": "upsert",
            "object": self.object,
            "externalIdFieldName": self.external_id_field,
            "state": self.state,
            "contentType": "CSV",
            "lineEnding": "LF",
            "contentUrl": f"services/data/v62.0/jobs/ingest/{self.id}/batches",
            "numberRecordsProcessed": len(self.succeeded) + len(self.failed),
            "numberRecordsFailed": len(self.failed),
            **({"errorMessage": self.error_message} if self.error_message else {}),
        }


class FakeBulk:
    """The ingest jobs of one fake org; ``routes`` go into its app."""

    def __init__(self, org: FakeSalesforce, polls_before_done: int = 1) -> None:
        self.org = org
        self.polls_before_done = polls_before_done
        self.fail_next_job = False
        self.jobs: dict[str, FakeJob] = {}
        self._ids = itertools.count(1)
        base = "/services/data/{version}/jobs/ingest"
        self.routes = [
            Route(base, self._create, methods=["POST"]),
            Route(base + "/{job}/batches", self._upload, methods=["PUT"]),
            Route(base + "/{job}", self._job, methods=["GET", "PATCH"]),
            Route(base + "/{job}/successfulResults/", self._successful, methods=["GET"]),
            Route(base + "/{job}/failedResults/", self._failed, methods=["GET"]),
            Route(base + "/{job}/unprocessedrecords/", self._unprocessed, methods=["GET"]),
        ]

    async def _create(self, request: Request) -> Response:
        body = await _json(request)
        refused = await self.org._authorize(request, "bulk_create", body) or self.org._switches()
        if refused is not None:
            return refused
        ok = (
            isinstance(body, dict)
            and body.get("operation") == "upsert"
            and body.get("contentType", "CSV") == "CSV"
            and body.get("object") in ("Lead", "Contact")
            and body.get("externalIdFieldName") == self.org.external_id_field
        )
        if not ok:
            return self.org._answer(
                [{"message": "Invalid job definition", "errorCode": "INVALIDJOB"}], 400
            )
        job = FakeJob(f"750fake{next(self._ids):011d}", body["object"], body["externalIdFieldName"])
        self.jobs[job.id] = job
        return self.org._answer(job.info())

    async def _upload(self, request: Request) -> Response:
        content = (await request.body()).decode()
        refused = await self.org._authorize(request, "bulk_upload", None)
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return self.org._answer(_not_found(), 404)
        if not request.headers.get("content-type", "").startswith("text/csv"):
            return self.org._answer(
                [{"message": "Content-Type must be text/csv", "errorCode": "INVALIDJOB"}], 400
            )
        if job.state != "Open" or job.csv is not None:
            return self.org._answer(
                [{"message": "The job is not open for upload", "errorCode": "INVALIDJOBSTATE"}],
                409,
            )
        job.csv = content
        return self.org._answer(None, 201)

    async def _job(self, request: Request) -> Response:
        body = await _json(request) if request.method == "PATCH" else None
        kind = "bulk_close" if request.method == "PATCH" else "bulk_poll"
        refused = await self.org._authorize(request, kind, body)
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return self.org._answer(_not_found(), 404)
        if request.method == "PATCH":
            if not isinstance(body, dict) or body.get("state") != "UploadComplete":
                return self.org._answer(
                    [{"message": "Unsupported state", "errorCode": "INVALIDJOBSTATE"}], 400
                )
            job.state = "UploadComplete"
            return self.org._answer(job.info())
        if job.state == "UploadComplete":
            job.polls += 1
            if job.polls > self.polls_before_done:
                self._process(job)
            else:
                job.state = "InProgress"
        elif job.state == "InProgress":
            job.polls += 1
            if job.polls > self.polls_before_done:
                self._process(job)
        return self.org._answer(job.info())

    def _process(self, job: FakeJob) -> None:
        rows = list(csv.DictReader(io.StringIO(job.csv or "")))
        if self.fail_next_job:
            self.fail_next_job = False
            job.state, job.error_message = "Failed", "InvalidBatch : Failed to process query"
            job.unprocessed = rows
            return
        key_field = job.external_id_field
        for row in rows:
            key = row.get(key_field) or ""
            fields = {
                k: (None if v == NULL else v)
                for k, v in row.items()
                if k != key_field and v not in ("", None)
            }
            existing = self.org.records.get((job.object, key))
            errors = self.org._check(job.object, key, fields, existing)
            if errors:
                first = errors[0]
                names = ",".join(first.get("fields") or [])
                job.failed.append(
                    {
                        "sf__Id": existing.id if existing else "",
                        "sf__Error": f"{first['statusCode']}:{first['message']}:{names} --",
                        **row,
                    }
                )
                continue
            record, created = self.org._apply(job.object, key, fields)
            job.succeeded.append(
                {"sf__Id": record.id, "sf__Created": "true" if created else "false", **row}
            )
        job.state = "JobComplete"

    async def _successful(self, request: Request) -> Response:
        return await self._results(request, "bulk_results", lambda job: job.succeeded)

    async def _failed(self, request: Request) -> Response:
        return await self._results(request, "bulk_results", lambda job: job.failed)

    async def _unprocessed(self, request: Request) -> Response:
        return await self._results(request, "bulk_results", lambda job: job.unprocessed)

    async def _results(self, request: Request, kind: str, rows: Any) -> Response:
        refused = await self.org._authorize(request, kind, None)
        if refused is not None:
            return refused
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return self.org._answer(_not_found(), 404)
        chosen: list[dict[str, str]] = list(reversed(rows(job)))
        out = io.StringIO()
        if chosen:
            writer = csv.DictWriter(out, fieldnames=list(chosen[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(chosen)
        usage = f"api-usage={self.org.api_used}/{self.org.api_limit}"
        return Response(out.getvalue(), media_type="text/csv", headers={"Sforce-Limit-Info": usage})


def _not_found() -> list[dict[str, str]]:
    return [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None
