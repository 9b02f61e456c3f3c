"""Admin form bodies are read with a limit and parsed by a bounded parser.

A url-encoded body made only of ``&`` never completes a form field, so field-count and
field-size limits never stop a streaming form parser: it would run on the event loop for
as long as the body lasts, and every signed webhook of the process would wait. Here the
service runs as a real process and the webhook is timed while such bodies arrive.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.conftest import SECRET
from tests.support.process import ServiceProcess, service_env
from tests.support.webhooks import event, signed

TOKEN = "stall-test-admin-token-0123456789abcdef"
ATTACKERS = 16
BODY = b"&" * 4_000_000  # without a cap, parsed byte by byte on the event loop
# HubSpot gives up on a webhook after 5 s; the answer must come well inside that.
WEBHOOK_LIMIT_S = 1.0


async def _attack(client: httpx.AsyncClient, url: str) -> int | None:
    try:
        answer = await client.post(
            url,
            content=BODY,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": url.removesuffix("/admin/login"),
            },
        )
    except httpx.TransportError:
        return None  # the service may close the connection on a body it refused
    return answer.status_code


async def _timed_webhook(client: httpx.AsyncClient, url: str) -> float:
    body, headers = signed(url, [event(7, "lead")], SECRET)
    started = time.perf_counter()
    answer = await client.post(url, content=body, headers=headers)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    return elapsed


async def test_ampersand_only_login_bodies_do_not_delay_a_signed_webhook(tmp_path: Path) -> None:
    env = service_env(tmp_path, admin_token=TOKEN)
    service = ServiceProcess(env)
    await service.astart()
    try:
        limits = httpx.Limits(max_connections=ATTACKERS + 4)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            hook = service.url("/webhooks/hubspot")
            await _timed_webhook(client, hook)  # warm: the first request opens the store
            login = service.url("/admin/login")
            attacks = [asyncio.create_task(_attack(client, login)) for _ in range(ATTACKERS)]
            await asyncio.sleep(0.2)  # the bodies are on their way or being parsed
            timings = []
            while not all(a.done() for a in attacks) or not timings:
                timings.append(await _timed_webhook(client, hook))
            slowest = max(timings)
            statuses = await asyncio.gather(*attacks)
        print(f"signed webhook under {ATTACKERS} &-only login bodies: {slowest:.3f} s")
        assert slowest < WEBHOOK_LIMIT_S, f"a signed webhook waited {slowest:.2f} s"
        # Every attacker got a quick refusal (413) or a closed connection, never a login.
        assert all(s in (None, 413) for s in statuses), statuses
    finally:
        service.stop()
    assert service.output().count("\n") < 200, "the log grew with the body"


async def test_a_login_form_within_the_limit_still_logs_in(tmp_path: Path) -> None:
    env = service_env(tmp_path, admin_token=TOKEN, log_level="debug")
    service = ServiceProcess(env)
    await service.astart()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            origin = {"Origin": service.base_url}
            ok = await client.post(
                service.url("/admin/login"), data={"token": TOKEN, "x": "&&&"}, headers=origin
            )
            assert ok.status_code == 303
            assert ok.headers["set-cookie"].startswith("stagesync_admin=")
            many = "&".join(f"f{i}=1" for i in range(50)) + f"&token={TOKEN}"
            refused = await client.post(
                service.url("/admin/login"),
                content=many,
                headers={**origin, "Content-Type": "application/x-www-form-urlencoded"},
            )
            assert refused.status_code == 400
            assert refused.json()["error"] == "bad_request"
    finally:
        service.stop()
    # The form parser's own debug lines (one per byte) stay off even at LOG_LEVEL=debug.
    assert "multipart" not in service.output()
