"""The one error tree of stagesync.

The dispatcher maps these to event states in one place
(:func:`receiver.dispatch.dispatcher.classify`): ``RateLimited`` delays without using an
attempt, ``TransientError`` is retried with backoff, ``PermanentError`` fails at once.
"""

from __future__ import annotations


class StagesyncError(Exception):
    """Base of every error raised on purpose by stagesync."""


class ConfigError(StagesyncError):
    """Settings are invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class StoreError(StagesyncError):
    """The database answers but cannot take writes: read-only, full, failing I/O."""


class SignatureError(StagesyncError):
    """A webhook request's signature is missing, wrong or too old."""


class UpstreamError(StagesyncError):
    """A call to HubSpot or to the target did not succeed.

    ``code`` is the upstream's own error code where it gave one (``INVALID_FIELD``,
    ``RATE_LIMIT``...), else a short stagesync code (``timeout``, ``http_503``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TransientError(UpstreamError):
    """Worth retrying later; ``retry_after`` (seconds) is a floor the upstream asked for."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """A rate-limit answer: delays the work but uses up no attempt."""


class AuthExpired(TransientError):
    """The access token expired; the client refreshes once before giving up."""


class PermanentError(UpstreamError):
    """Retrying cannot help: the event goes to ``failed`` with this code and message."""


class TokenRefused(PermanentError):
    """The upstream refused a credential for good (a refresh token or client secret it
    rejects): fails like any permanent error, and is alerted on as a refused token."""
