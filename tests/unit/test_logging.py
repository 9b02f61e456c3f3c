"""Logging: JSON off a TTY, console on one, bound ids, and no secret in any line."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from receiver.ops.logging import (
    QUIET_LIBRARIES,
    REDACTED,
    RequestIdMiddleware,
    StdlibHandler,
    configure_logging,
    get_logger,
)
from receiver.web import webhook
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.fakes.hubspot import create_fake_hubspot
from tests.support.process import ServiceProcess, service_env
from tests.support.servers import running_server
from tests.support.webhooks import event, signed

ADMIN_TOKEN = "admin-token-never-logged-0123456789abcdef"
CONTACT = 4242


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- configure_logging -------------------------------------------------------------------


def test_lines_are_json_with_level_and_timestamp_when_not_on_a_tty() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    get_logger("t").info("service_started", target="dry-run")
    [line] = json_lines(out.getvalue())
    assert line["event"] == "service_started"
    assert line["level"] == "info"
    assert line["target"] == "dry-run"
    assert line["timestamp"].endswith("Z")


def test_lines_are_console_text_on_a_tty() -> None:
    out = FakeTTY()
    configure_logging("auto", "info", stream=out)
    get_logger("t").info("service_started", target="dry-run")
    text = out.getvalue()
    assert "service_started" in text and "target=dry-run" in text
    assert not text.lstrip().startswith("{")


def test_level_filters_lower_lines() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    log = get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in json_lines(out.getvalue())] == ["loud"]


def test_bound_context_appears_on_every_line() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        get_logger("a").info("one")
        get_logger("b").warning("two")
    get_logger("c").info("three")
    lines = json_lines(out.getvalue())
    assert [line.get("request_id") for line in lines] == ["req-1", "req-1", None]


def test_standard_library_records_are_rendered_as_json_lines_once() -> None:
    out = io.StringIO()
    configure_logging("json", "info", secrets=[SECRET], stream=out)
    configure_logging("json", "info", secrets=[SECRET], stream=out)  # no second handler
    # Not "uvicorn.error" itself: in-process uvicorn runs (running_server) configure it
    # not to propagate; the real service run below checks uvicorn's lines.
    logging.getLogger("some.library").warning("odd request from %s: %s", "1.2.3.4", SECRET)
    logging.getLogger("some.library").debug("below the level")
    [line] = json_lines(out.getvalue())
    assert line["event"] == f"odd request from 1.2.3.4: {REDACTED}"
    assert line["logger"] == "some.library" and line["level"] == "warning"
    assert len(out.getvalue().splitlines()) == 1


def test_http_and_database_libraries_only_log_warnings_even_at_debug() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    for name in ("httpx", "httpcore.http11", "aiosqlite"):
        logging.getLogger(name).info('HTTP Request: PATCH http://x "HTTP/1.1 201 Created"')
        logging.getLogger(name).debug("executing SELECT 1")
    logging.getLogger("httpx").warning("a real problem")
    logging.getLogger("receiver.example").debug("our own debug line")
    assert [line["event"] for line in json_lines(out.getvalue())] == [
        "a real problem",
        "our own debug line",
    ]


def test_known_secrets_are_redacted_anywhere_in_a_line() -> None:
    out = io.StringIO()
    configure_logging("json", "info", secrets=[SECRET, ADMIN_TOKEN], stream=out)
    get_logger("t").warning(
        f"odd {SECRET}",
        url=f"https://x.example/?token={ADMIN_TOKEN}",
        nested={"list": [SECRET, ("a", ADMIN_TOKEN)]},
    )
    text = out.getvalue()
    assert SECRET not in text and ADMIN_TOKEN not in text
    [line] = json_lines(text)
    assert line["event"] == f"odd {REDACTED}"
    assert line["nested"]["list"][0] == REDACTED


def test_exceptions_are_rendered_without_the_secret_in_their_message() -> None:
    out = io.StringIO()
    configure_logging("json", "info", secrets=[SECRET], stream=out)
    try:
        raise RuntimeError(f"upstream echoed {SECRET}")
    except RuntimeError:
        get_logger("t").exception("call_failed")
    text = out.getvalue()
    assert "call_failed" in text and "RuntimeError" in text
    assert SECRET not in text


# -- request ids -------------------------------------------------------------------------


async def _logs_twice(request: Request) -> PlainTextResponse:
    log = get_logger("t")
    log.info("first")
    await asyncio.sleep(0)
    log.info("second")
    return PlainTextResponse("ok")


async def test_request_id_middleware_binds_one_id_per_request() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    app = RequestIdMiddleware(Starlette(routes=[Route("/", _logs_twice)]))
    async with running_server(app) as url, httpx.AsyncClient() as http:
        await asyncio.gather(http.get(url), http.get(url), http.get(url))
        await http.get(url, headers={"X-Request-Id": "lb-abc.123"})
        await http.get(url, headers={"X-Request-Id": "bad id\twith spaces"})
    lines = [line for line in json_lines(out.getvalue()) if line["event"] in ("first", "second")]
    ids = [line["request_id"] for line in lines]
    assert len(lines) == 10 and all(ids)
    assert len(set(ids)) == 5
    for request_id in set(ids):
        assert sorted(line["event"] for line in lines if line["request_id"] == request_id) == [
            "first",
            "second",
        ]
    assert "lb-abc.123" in ids
    assert not any(" " in i for i in ids)


async def test_webhook_log_lines_carry_a_request_id(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    app = create_app(build_settings(tmp_path))
    async with running_server(app) as url, httpx.AsyncClient() as http:
        body, headers = signed(url + "/webhooks/hubspot", [event(1, "lead")], "wrong")
        response = await http.post(url + "/webhooks/hubspot", content=body, headers=headers)
        assert response.status_code == 401
    [line] = [x for x in json_lines(out.getvalue()) if x["event"] == "signature_rejected"]
    assert line.get("request_id")


async def test_a_webhook_bug_answers_json_500_and_logs_the_callers_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)

    def broken(body: bytes) -> list[dict[str, object]]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook, "parse_body", broken)
    app = create_app(build_settings(tmp_path))
    async with running_server(app) as url, httpx.AsyncClient() as http:
        body, headers = signed(url + "/webhooks/hubspot", [event(1, "lead")], SECRET)
        headers["X-Request-Id"] = "lb-7"
        response = await http.post(url + "/webhooks/hubspot", content=body, headers=headers)
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert "a bug" not in response.text and "Traceback" not in response.text
        assert (await http.get(url + "/healthz")).status_code == 200
    [line] = [x for x in json_lines(out.getvalue()) if x["event"] == "unhandled_error"]
    assert line["request_id"] == "lb-7" and "a bug" in line["exception"]


# -- a real service run ------------------------------------------------------------------


async def wait_for(service: ServiceProcess, needle: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while needle not in service.output():
        assert time.monotonic() < deadline, f"{needle!r} never logged:\n{service.output()}"
        await asyncio.sleep(0.05)


async def test_real_run_logs_json_with_ids_and_never_a_secret(tmp_path: Path) -> None:
    fake = create_fake_hubspot(
        contacts={CONTACT: {"lifecyclestage": "lead", "email": "ada@example.com"}}
    )
    async with running_server(fake.app) as hubspot_url, httpx.AsyncClient(timeout=10) as http:
        env = service_env(
            tmp_path,
            hubspot_access_token=fake.token,
            hubspot_api_url=hubspot_url,
            admin_token=ADMIN_TOKEN,
        )
        del env["STAGESYNC_LOG_FORMAT"]  # auto: JSON, since the output is not a TTY
        service = ServiceProcess(env)
        await service.astart()
        try:
            hook = service.url("/webhooks/hubspot")
            body, headers = signed(hook, [event(CONTACT, "lead")], SECRET)
            assert (await http.post(hook, content=body, headers=headers)).status_code == 200
            body, headers = signed(hook, [event(CONTACT, "customer")], "not-the-secret")
            assert (await http.post(hook, content=body, headers=headers)).status_code == 401
            admin = service.url("/admin/events")
            ok = await http.get(admin, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert ok.status_code == 200
            refused = await http.get(admin, headers={"Authorization": f"Bearer {SECRET}"})
            assert refused.status_code == 401
            # uvicorn's own warning about a broken request must be a JSON line too.
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await reader.read()
            writer.close()
            await writer.wait_closed()
            await wait_for(service, "event_synced")
            await wait_for(service, "Invalid HTTP request")
        finally:
            service.stop()
    assert fake.batch_read_calls >= 1  # the HubSpot token really was used

    output = service.output()
    for secret in (SECRET, fake.token, ADMIN_TOKEN):
        assert secret not in output
    lines = json_lines(output)
    assert len(lines) == len([line for line in output.splitlines() if line.strip()])
    events = [line["event"] for line in lines]
    assert "service_started" in events and "signature_rejected" in events
    [invalid] = [line for line in lines if "Invalid HTTP request" in line["event"]]
    assert invalid["logger"] == "uvicorn.error" and invalid["level"] == "warning"
    [synced] = [line for line in lines if line["event"] == "event_synced"]
    assert synced["contact_id"] == CONTACT
    assert isinstance(synced["event_id"], int)
    assert synced["kind"] == "lead"
