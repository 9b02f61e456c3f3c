"""The HTTP protocol ``stagesync serve`` runs: uvicorn's httptools one, with two limits.

uvicorn puts no bound on a request's head and no time limit on receiving a request, and
the service is often reached without a proxy in front (the Dockerfile binds 0.0.0.0):

- **Head size.** httptools joins a header value's pieces as they arrive, so its cost
  grows with the square of the header's length: one unauthenticated 100 MB header took
  10 s of CPU, while every webhook waited. Once the reads of a head not yet complete pass
  :attr:`max_head_bytes`, the request gets a 431 and the connection is closed. A head
  that comes whole in one read (up to 256 KB with uvloop) is parsed in linear time and
  let through: counting it would cost every request, for no gain.
- **Read time.** A client that opens a connection and sends nothing, or a head or body
  that never completes, held the connection (and up to a 1 MB buffered body) for good.
  A request not received in full within :attr:`read_timeout_s` of its first byte (or of
  the connection, for a silent one) gets a 408 and the connection is closed. The app's
  own time to answer is not counted: a webhook waiting for its commit is never cut off.

Both answers use the JSON error shape of every other error. uvicorn's ``h11`` protocol
has a head limit of its own, but it parses in Python and would cost the ingest path much
of its speed.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
READ_TIMEOUT_S = 30.0


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": code, "message": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head and a deadline to receive a request."""

    max_head_bytes = MAX_HEAD_BYTES
    read_timeout_s = READ_TIMEOUT_S

    _deadline: asyncio.TimerHandle | None = None
    _in_head = False
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request."""
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse ``data``; refuse the request once its head passes the limit."""
        super().data_received(data)
        # Counted after parsing: a chunk that completes the head may carry a large body.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                message = f"The request's head is larger than {self.max_head_bytes} bytes."
                self._refuse(431, "Request Header Fields Too Large", "headers_too_large", message)

    def on_message_begin(self) -> None:
        """A request starts: count its head, and start the clock if it is not running."""
        self._in_head, self._head_bytes = True, 0
        self._start_deadline()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """The head is in: stop counting."""
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in: the clock stops; the app takes the time it needs."""
        self._stop_deadline()
        super().on_message_complete()

    def _start_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        message = f"The request was not received in full within {self.read_timeout_s:g} s."
        self._refuse(408, "Request Timeout", "request_timeout", message)

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        self._stop_deadline()
        if self.transport.is_closing():
            return
        # Before its head is complete a request has no cycle yet (``self.cycle`` is the
        # previous request's, or None): nothing has answered it. In its body, the app
        # may have answered already (a 413, say); then the connection just closes.
        reading_body = not self._in_head and self.cycle is not None
        if not reading_body or not self.cycle.response_started:
            self.transport.write(_answer(status, reason, code, message))
        if reading_body:
            # The app, if it is reading the body, sees the client as gone.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
