"""What a new user meets in the first hour with the command line, run as real processes:
the port, the listen line, a pipe closed early, a misspelt variable, the help, progress."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.process import ROOT, ServiceProcess, child_env, command, run_cli, service_env
from tests.support.servers import free_port, running_server
from tests.support.webhooks import event, signed

EVENTS = 600  # their listing, about 75 KB, is more than a pipe holds


@pytest.fixture(scope="module")
def synced_database(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A database with :data:`EVENTS` synced events, and the environment naming it."""
    tmp_path = tmp_path_factory.mktemp("first-hour")

    async def fill() -> None:
        settings = build_settings(tmp_path)
        async with running_server(create_app(settings)) as base, httpx.AsyncClient() as http:
            url = f"{base}/webhooks/hubspot"
            body, headers = signed(url, [event(n, "lead") for n in range(1, EVENTS + 1)], SECRET)
            assert (await http.post(url, content=body, headers=headers)).status_code == 200
            for _ in range(500):
                status = (await http.get(f"{base}/status")).json()
                if status["counts"]["synced"] == EVENTS:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"not synced: {status['counts']}")

    asyncio.run(fill())
    return service_env(tmp_path)


def test_a_listing_piped_into_head_ends_quietly_with_status_0(
    synced_database: dict[str, str],
) -> None:
    proc = subprocess.Popen(
        command("events", "--limit", "500"),
        env=child_env(synced_database),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does after its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0, err
    assert first.strip() and err == ""


def test_replay_shows_a_progress_bar_on_a_terminal_and_one_line_when_piped(
    synced_database: dict[str, str],
) -> None:
    piped = run_cli(synced_database, "replay", "--state", "synced")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == f"replayed {EVENTS} event(s)\n" and piped.stderr == ""

    # No server runs, so the events stay pending: put them back to synced in the
    # database, then replay them again with standard error on a terminal.
    _mark_synced(synced_database["STAGESYNC_DATABASE_URL"])
    main, tty = pty.openpty()
    proc = subprocess.Popen(
        command("replay", "--state", "synced"),
        env={**child_env(synced_database), "TERM": "xterm"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=tty,
    )
    os.close(tty)
    out, _ = proc.communicate(timeout=30)
    shown = _read_all(main)
    assert proc.returncode == 0
    assert out.decode() == f"replayed {EVENTS} event(s)\n"
    assert "replaying" in shown, shown


def _mark_synced(database_url: str) -> None:
    import sqlite3

    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE events SET state = 'synced' WHERE state = 'pending'")


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_a_misspelt_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    env = {**service_env(tmp_path), "STAGESYNC_TARGT": "salesforce", "STAGESYNC_PORT": "8001"}
    result = run_cli(env, "check-config")
    assert result.returncode == 0, result.stderr
    assert (
        "warning: STAGESYNC_TARGT is not a stagesync setting and is ignored;"
        " did you mean STAGESYNC_TARGET?" in result.stderr
    )
    assert "STAGESYNC_PORT" not in result.stderr  # a real setting
    assert "http://127.0.0.1:8001" in result.stdout


def test_check_config_without_a_secret_says_how_make_run_gets_one(tmp_path: Path) -> None:
    env = {"STAGESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = run_cli(env, "check-config")
    assert result.returncode == 1
    assert "STAGESYNC_HUBSPOT_CLIENT_SECRET: required but not set" in result.stderr
    assert "(`make run` sets a demo secret when it is unset" in result.stderr


def test_help_has_no_markup_and_names_every_default(tmp_path: Path) -> None:
    top = run_cli({}, "--help").stdout
    assert "``" not in top and "stagesync: HubSpot contact webhooks" in top
    serve = " ".join(run_cli({}, "serve", "--help").stdout.split())
    assert "STAGESYNC_HOST, else 127.0.0.1" in serve and "STAGESYNC_PORT, else 8000" in serve
    sample = " ".join(run_cli({}, "send-sample", "--help").stdout.split())
    assert "http://127.0.0.1:8000/webhooks/hubspot" in sample
    assert "lifecycle stage the sample contact moves to (default: lead)" in sample


async def test_serve_logs_where_it_listens_once_and_send_sample_follows_the_port(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = service_env(tmp_path, port=str(port))
    service = ServiceProcess(env, port=port)
    await service.astart()
    try:
        sent = await asyncio.to_thread(run_cli, env, "send-sample")  # no --url
        assert sent.returncode == 0, sent.stderr
    finally:
        service.stop()
    lines = [orjson.loads(line) for line in service.output().splitlines() if line.startswith("{")]
    listening = [line for line in lines if line["event"] == "listening"]
    assert len(listening) == 1
    assert listening[0]["url"] == f"http://127.0.0.1:{port}"
    assert any(line["event"] == "service_started" for line in lines)


def test_make_run_and_make_sample_take_the_port() -> None:
    for target in ("run", "sample"):
        plan = subprocess.run(
            ["make", "-n", target, "PORT=8001"], cwd=ROOT, capture_output=True, text=True
        )
        assert plan.returncode == 0, plan.stderr
        assert "STAGESYNC_PORT=8001" in plan.stdout
