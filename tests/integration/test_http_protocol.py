"""The served HTTP protocol's limits, over real sockets: head size and time to receive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from receiver.web.http_protocol import LimitedHttpToolsProtocol
from tests.support.servers import free_port


class QuickLimits(LimitedHttpToolsProtocol):
    max_head_bytes = 4096
    read_timeout_s = 0.5


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)})


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(1.0)  # twice the read timeout: the app's own time is not limited
    return JSONResponse({"slow": True})


@asynccontextmanager
async def server() -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/slow", slow)])
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", http=QuickLimits, lifespan="off"
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(500):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def exchange(port: int, *pieces: bytes, wait_s: float = 3.0) -> bytes:
    """Send ``pieces`` one read apart, then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # its own read on the server's side
        return await asyncio.wait_for(reader.read(), timeout=wait_s)
    finally:
        writer.close()


def status_and_json(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


async def test_a_head_past_the_limit_gets_431_in_json_and_the_server_serves_on() -> None:
    async with server() as port:
        # The costly case: a header that keeps coming, read after read.
        head = [b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"a" * 1000] * 5
        status, doc = status_and_json(await exchange(port, *head))
        assert status == 431 and doc["error"] == "headers_too_large"
        ok = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        assert status_and_json(await exchange(port, ok)) == (200, {"received": 2})


async def test_a_large_body_is_not_taken_for_a_large_head() -> None:
    async with server() as port:
        body = b"x" * 200_000
        request = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert status_and_json(await exchange(port, request)) == (200, {"received": 200_000})


async def test_a_connection_that_sends_nothing_gets_408_and_is_closed() -> None:
    async with server() as port:
        status, doc = status_and_json(await exchange(port, b""))
        assert status == 408 and doc["error"] == "request_timeout"


async def test_a_body_that_never_completes_gets_408_and_is_closed() -> None:
    async with server() as port:
        partial = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        status, doc = status_and_json(await exchange(port, partial))
        assert status == 408 and "not received in full" in doc["message"]


async def test_the_apps_own_time_to_answer_is_not_limited() -> None:
    async with server() as port:
        request = b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert status_and_json(await exchange(port, request)) == (200, {"slow": True})


async def test_each_request_on_a_kept_alive_connection_gets_its_own_time() -> None:
    async with server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(3):
                await asyncio.sleep(0.3)  # 0.9 s in all: more than one timeout
                writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
                assert head.startswith(b"HTTP/1.1 200")
                await reader.readexactly(int(head.split(b"content-length: ")[1].split()[0]))
        finally:
            writer.close()
