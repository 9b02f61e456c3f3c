"""The admin page's form bodies: read with a limit, then parsed by a bounded parser.

A streaming form parser works through a body byte by byte on the event loop, and a
body that never completes a field (only ``&``) slips past field-count and field-size
limits, so one request could hold every webhook of the process for as long as it kept
sending. The page's forms hold one short field at most: the body is read up to
:data:`MAX_FORM_BYTES`, refused past that, and split with :func:`urllib.parse.parse_qsl`,
which refuses more than :data:`MAX_FORM_FIELDS` fields before it splits anything.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from receiver.web.numbers import parse_length

MAX_FORM_BYTES = 4096
MAX_FORM_FIELDS = 8
FORM_TYPE = "application/x-www-form-urlencoded"


class FormRefused(Exception):
    """The body is not a form this page reads; ``status``, ``code`` and ``message`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


TOO_LARGE = FormRefused(
    413, "payload_too_large", f"A form of this page is at most {MAX_FORM_BYTES} bytes."
)


async def read_body(request: Request, limit: int = MAX_FORM_BYTES) -> bytes:
    """The body, or :class:`FormRefused` (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (parse_length(declared) or 0) > limit:
        raise TOO_LARGE
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise TOO_LARGE if limit == MAX_FORM_BYTES else _too_large(limit)
    except ClientDisconnect:
        raise FormRefused(400, "bad_request", "The form was not sent completely.") from None
    # Kept on the request, as Starlette's own body() does, so a handler may read it again.
    request._body = bytes(body)
    return request._body


def _too_large(limit: int) -> FormRefused:
    return FormRefused(413, "payload_too_large", f"This form is at most {limit} bytes.")


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a post: field name to its first value."""
    fields = await read_form_lists(request)
    return {name: values[0] for name, values in fields.items()}


async def read_form_lists(
    request: Request, *, max_fields: int = MAX_FORM_FIELDS, limit: int = MAX_FORM_BYTES
) -> dict[str, list[str]]:
    """The url-encoded form of a post: field name to all its values, in order."""
    body = await read_body(request, limit)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if body and media != FORM_TYPE:
        raise FormRefused(415, "unsupported_media_type", f"Send the form as {FORM_TYPE}.")
    try:
        pairs = parse_qsl(
            body.decode("utf-8", errors="replace"),
            keep_blank_values=True,
            max_num_fields=max_fields,
            errors="replace",
        )
    except ValueError:
        raise FormRefused(
            400, "bad_request", f"This form has at most {max_fields} fields."
        ) from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form
