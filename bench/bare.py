"""The bare endpoint: Starlette under uvicorn that only reads the body and answers 204.

It is the ceiling the service is compared with: same server, same event loop and HTTP
parser, no signature, no parsing, no storage. Run it with
``python -m bench.bare --port P``.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# The options `stagesync serve` (receiver/cli/serve.py) passes to uvicorn.run; loop and http
# are left to uvicorn's "auto", which picks uvloop and httptools when they are installed
# (uvicorn[standard]). Keep the two in step so the comparison stays fair.
UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "access_log": False,
    "proxy_headers": True,
    "server_header": False,
}


async def webhook(request: Request) -> Response:
    """Read the whole body, answer 204."""
    await request.body()
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    """Liveness, polled by the bench before it starts the load."""
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/webhooks/hubspot", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)


def main() -> None:
    """Serve the bare endpoint on loopback."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
