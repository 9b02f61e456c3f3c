"""JSON answers: every error is ``{"error": code, "message": sentence}``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSON(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialize ``content``."""
        return orjson.dumps(content)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSON:
    """The error shape every endpoint answers with."""
    return JSON({"error": code, "message": message}, status_code=status, headers=headers)


def sentence(text: str) -> str:
    """``text`` as a sentence: first letter capitalised, the rest as written, a full stop."""
    return f"{text[:1].upper()}{text[1:]}."
