"""OData ``$batch`` bodies for Dataverse: upserts out, one answer per upsert back. Pure.

A batch request is ``multipart/mixed``; each part is one HTTP request written out as
text (``application/http``). No change sets are used: a change set is one transaction,
and one refused record must not undo the others. With ``Prefer:
odata.continue-on-error`` Dataverse runs every part and answers each in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Part:
    """One request inside a batch."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: Any = None


@dataclass(frozen=True, slots=True)
class PartAnswer:
    """One answer inside a batch answer."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


def encode(parts: Sequence[Part], boundary: str | None = None) -> tuple[str, bytes]:
    """The ``Content-Type`` header and the body of a batch request."""
    boundary = boundary or f"batch_{uuid.uuid4()}"
    chunks: list[bytes] = []
    for n, part in enumerate(parts, 1):
        lines = [
            f"--{boundary}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            f"Content-ID: {n}",
            "",
            f"{part.method} {part.url} HTTP/1.1",
            *(f"{name}: {value}" for name, value in part.headers.items()),
        ]
        payload = b""
        if part.body is not None:
            lines.append("Content-Type: application/json; type=entry")
            payload = orjson.dumps(part.body)
        chunks.append("\r\n".join([*lines, "", ""]).encode() + payload + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/mixed; boundary={boundary}", b"".join(chunks)


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a ``multipart/mixed`` content type."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"')
    return None


def decode(content_type: str, body: bytes) -> list[PartAnswer]:
    """The answers of a batch answer, in order; ``ValueError`` when it is not one."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise ValueError("the batch answer is not multipart (no boundary)")
    text = body.decode("utf-8", errors="replace")
    answers: list[PartAnswer] = []
    for chunk in text.split(f"--{boundary}")[1:]:
        if chunk.startswith("--"):
            break
        nested = _nested_boundary(chunk)
        if nested is not None:  # a change set's answers
            answers += decode(f"multipart/mixed; boundary={nested}", _after_headers(chunk))
            continue
        answers.append(_http_answer(_after_headers(chunk).decode("utf-8", errors="replace")))
    return answers


def _nested_boundary(chunk: str) -> str | None:
    head = chunk.lstrip("\r\n").split("\r\n\r\n", 1)[0].replace("\r\n", "\n")
    for line in head.split("\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type" and "multipart/mixed" in value:
            return boundary_of(value.strip())
    return None


def _after_headers(chunk: str) -> bytes:
    normal = chunk.lstrip("\r\n").replace("\r\n", "\n")
    _, _, rest = normal.partition("\n\n")
    return rest.encode()


def _http_answer(text: str) -> PartAnswer:
    head, _, payload = text.partition("\n\n")
    lines = head.strip("\n").split("\n")
    status_line = lines[0].split(" ", 2) if lines else []
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer in the batch: {lines[:1]}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    payload = payload.strip()
    body: Any = None
    if payload:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = payload
    return PartAnswer(int(status_line[1]), headers, body)
