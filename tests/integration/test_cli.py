"""The README flow and the read commands, as a user runs them: real subprocesses.

``stagesync serve`` runs as ``make run`` does (the demo secret, the default SQLite file
in the working directory); ``stagesync send-sample`` from "another shell" signs with
the same demo secret; ``stagesync events``, ``records`` and ``status`` then read the
same database.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from receiver.cli.main import DEMO_SECRET, main
from receiver.store.factory import make_store
from tests.support.process import ServiceProcess, run_cli

LEAD, CONTACT = 777, 778
EVENT_KEYS = {
    "id", "state", "reason", "object_id", "subscription_type", "stage",
    "attempts", "attempts_since_replay", "last_error", "received_at", "updated_at",
    "target_kind", "target_id", "raw",
}  # fmt: skip
RECORD_KEYS = {"hubspot_id", "kind", "target_id", "fields", "upserted_at"}
DEMO_ENV = {"STAGESYNC_HUBSPOT_CLIENT_SECRET": DEMO_SECRET}


def cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli(env or {}, *args, console_script=True, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def until_settled(service: ServiceProcess, within_s: float = 15) -> dict[str, Any]:
    """``/status`` once nothing is pending or retrying any more."""
    deadline = time.monotonic() + within_s
    with httpx.Client() as http:
        while True:
            doc: dict[str, Any] = http.get(service.url("/status")).json()
            if doc["counts"]["pending"] == doc["counts"]["retrying"] == 0:
                return doc
            assert time.monotonic() < deadline, doc
            time.sleep(0.05)


@dataclass
class Demo:
    service: ServiceProcess
    home: Path  # the working directory of every command
    samples: list[subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``make run`` in a fresh directory, then two ``send-sample`` runs, processed."""
    home = tmp_path_factory.mktemp("demo")
    service = ServiceProcess(DEMO_ENV, console_script=True, cwd=home)
    service.start()
    try:
        hook = service.url("/webhooks/hubspot")
        samples = [
            run_cli(
                {},
                "send-sample",
                "--url",
                hook,
                "--object-id",
                str(contact),
                "--stage",
                stage,
                console_script=True,
                cwd=home,
            )
            for contact, stage in ((LEAD, "lead"), (CONTACT, "customer"))
        ]
        until_settled(service)
        yield Demo(service, home, samples)
    finally:
        service.stop()


def test_send_sample_is_accepted_signed_with_the_demo_secret(demo: Demo) -> None:
    for sample in demo.samples:
        assert sample.returncode == 0, sample.stdout + sample.stderr
        assert '"accepted":2' in sample.stdout
        assert "demo secret" in sample.stderr
    assert (demo.home / "stagesync.db").exists()


def test_events_json_shows_the_sample_events(demo: Demo) -> None:
    events = json_lines(cli(demo.home, "events", "--json"))
    assert len(events) == 4
    assert all(set(e) == EVENT_KEYS for e in events)
    assert {e["object_id"] for e in events} == {LEAD, CONTACT}
    assert {e["subscription_type"] for e in events} == {
        "contact.creation",
        "contact.propertyChange",
    }
    changes = {e["object_id"]: e for e in events if e["subscription_type"] != "contact.creation"}
    assert changes[LEAD]["state"] == "synced" and changes[LEAD]["target_kind"] == "lead"
    assert changes[CONTACT]["target_kind"] == "contact"
    assert changes[LEAD]["raw"]["propertyValue"] == "lead"


def test_events_lists_the_sample_events_for_people(demo: Demo) -> None:
    lines = cli(demo.home, "events").splitlines()
    assert len(lines) == 4
    assert sum("synced" in line for line in lines) == 2
    assert any(f"contact={LEAD}" in line for line in lines)


def test_events_limit_keeps_the_newest_and_state_filters(demo: Demo) -> None:
    everything = json_lines(cli(demo.home, "events", "--json"))
    newest = json_lines(cli(demo.home, "events", "--json", "--limit", "1"))
    assert len(newest) == 1 and newest[0]["id"] == max(e["id"] for e in everything)
    skipped = json_lines(cli(demo.home, "events", "--json", "--state", "skipped"))
    assert [e["subscription_type"] for e in skipped] == ["contact.creation"] * 2
    assert {e["reason"] for e in skipped} == {"coalesced"}


def test_events_show_prints_one_event_with_its_history(demo: Demo) -> None:
    synced = json_lines(cli(demo.home, "events", "--json", "--state", "synced"))
    shown = orjson.loads(cli(demo.home, "events", "show", str(synced[0]["id"])))
    assert set(shown) == EVENT_KEYS | {"history"}
    assert shown["id"] == synced[0]["id"] and shown["state"] == "synced"
    assert [h["outcome"] for h in shown["history"]] == ["synced"]


def test_events_show_unknown_id_exits_1_and_bad_usage_exits_2(demo: Demo) -> None:
    missing = run_cli({}, "events", "show", "999999", console_script=True, cwd=demo.home)
    assert missing.returncode == 1 and "999999" in missing.stderr
    bad = run_cli({}, "events", "show", "x", console_script=True, cwd=demo.home)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_records_json_lists_what_the_dry_run_target_holds(demo: Demo) -> None:
    records = json_lines(cli(demo.home, "records", "--json"))
    assert all(set(r) == RECORD_KEYS for r in records)
    assert {(r["hubspot_id"], r["kind"]) for r in records} == {
        (str(LEAD), "lead"),
        (str(CONTACT), "contact"),
    }
    leads = json_lines(cli(demo.home, "records", "--json", "--kind", "lead"))
    assert [r["hubspot_id"] for r in leads] == [str(LEAD)]
    assert str(CONTACT) in cli(demo.home, "records")


def test_status_shows_the_same_figures_as_the_endpoint(demo: Demo) -> None:
    served = until_settled(demo.service)
    doc = orjson.loads(cli(demo.home, "status", "--json"))
    assert doc["counts"] == served["counts"]
    assert doc["counts"]["synced"] == 2
    assert doc["lead_stages"] == served["lead_stages"]
    assert doc["target"] == "dry-run"
    text = cli(demo.home, "status")
    assert "synced" in text and "lead, marketingqualifiedlead" in text
    assert DEMO_SECRET not in text + orjson.dumps(doc).decode()


def test_serve_with_the_demo_secret_warns_loudly(demo: Demo) -> None:
    assert "DEMO CLIENT SECRET" in demo.service.output()


def test_send_sample_signed_with_another_secret_is_refused(demo: Demo) -> None:
    result = run_cli(
        {"STAGESYNC_HUBSPOT_CLIENT_SECRET": "some-other-secret"},
        "send-sample", "--url", demo.service.url("/webhooks/hubspot"),
        console_script=True, cwd=demo.home,
    )  # fmt: skip
    assert result.returncode == 1
    assert "401" in result.stdout


def test_send_sample_to_a_closed_port_says_so_without_traceback(tmp_path: Path) -> None:
    result = run_cli({}, "send-sample", "--url", "http://127.0.0.1:9/webhooks/hubspot",
                     console_script=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert "could not reach" in result.stderr and "Traceback" not in result.stderr


def new_database(home: Path) -> None:
    """An empty, migrated ``home/stagesync.db``, as ``stagesync serve`` leaves it."""

    async def create() -> None:
        store = make_store(f"sqlite:///{home / 'stagesync.db'}")
        await store.open()
        await store.close()

    asyncio.run(create())


def test_read_commands_work_on_an_empty_database_without_a_server(tmp_path: Path) -> None:
    new_database(tmp_path)
    assert cli(tmp_path, "events", "--json") == ""
    assert cli(tmp_path, "records", "--json") == ""
    assert orjson.loads(cli(tmp_path, "status", "--json"))["counts"]["pending"] == 0


def test_status_on_an_empty_database_says_none_and_never_instead_of_none(tmp_path: Path) -> None:
    new_database(tmp_path)
    lines = cli(tmp_path, "status").splitlines()
    assert "  oldest pending age: none" in lines
    assert "  last sync:          never" in lines
    assert "None" not in "\n".join(lines)


@pytest.mark.parametrize(
    "command",
    [
        ("events",),
        ("events", "show", "1"),
        ("status",),
        ("records",),
        ("replay", "1"),
        ("replay", "1", "--dry-run"),
        ("replay", "--state", "failed", "--dry-run"),
        ("purge", "--state", "failed", "--before", "2020-01-01"),
    ],
)
def test_database_commands_refuse_a_sqlite_file_that_does_not_exist_and_create_none(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = run_cli({}, *command, cwd=tmp_path)  # the default sqlite:///stagesync.db
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot open the database sqlite:///stagesync.db: ")
    assert f"{tmp_path / 'stagesync.db'} does not exist" in line
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_database_path_that_cannot_be_checked_is_left_to_sqlite_to_refuse(
    tmp_path: Path,
) -> None:
    # Only a file that is surely absent is "missing": here the parent is a file.
    (tmp_path / "afile").write_text("")
    url = f"sqlite:///{tmp_path}/afile/stagesync.db"
    result = run_cli({"STAGESYNC_DATABASE_URL": url}, "status", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot open the database {url}: ")
    assert "does not exist" not in line


HUGE = "9" * 24


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("events", "--limit", HUGE), "--limit: must be a whole number from 1 to 500"),
        (("events", "--limit", "-1"), "--limit: must be a whole number from 1 to 500"),
        (("events", "--limit", "0"), "--limit: must be a whole number from 1 to 500"),
        (("events", "--limit", "501"), "--limit: must be a whole number from 1 to 500"),
        (
            ("events", "--object-id", HUGE),
            f"--object-id: must be a whole number from 0 to {2**63 - 1}",
        ),
        (("replay", HUGE), f"ID: must be a whole number from 1 to {2**63 - 1}"),
        (("replay", "--state", "failed", "--object-id", HUGE, "--dry-run"), "--object-id: must"),
        (("send-sample", "--object-id", HUGE), "--object-id: must be a whole number from 0"),
        (("send-sample", "--object-id", "9" * 5000), "--object-id: must be a whole number"),
        (("serve", "--port", "99999"), "--port: must be a whole number from 1 to 65535"),
        (("serve", "--port", "0"), "--port: must be a whole number from 1 to 65535"),
        (("events", "show", HUGE), f"the ID must be a whole number from 1 to {2**63 - 1}"),
        (("events", "show", "\u00b2"), "the ID must be a whole number from 1"),
        (("events", "show", "0"), "the ID must be a whole number from 1"),
    ],
)
def test_numbers_out_of_range_or_not_ascii_digits_are_usage_errors_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    expected: str,
) -> None:
    # In-process, as only parsing runs: a subprocess each would make this slow.
    monkeypatch.chdir(tmp_path)
    try:
        code: object = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [("events",), ("status",), ("serve", "--port", "9")])
def test_database_that_cannot_be_opened_is_one_line_and_exit_1(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = {**DEMO_ENV, "STAGESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'no' / 'such.db'}"}
    result = run_cli(env, *command, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot open the database sqlite:///")
    assert "Traceback" not in result.stderr


def test_corrupt_database_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "stagesync.db").write_bytes(b"this is not a database" * 100)
    result = run_cli({}, "events", cwd=tmp_path, timeout=5)
    assert result.returncode == 1
    assert "file is not a database" in result.stderr


def test_serve_freezes_start_up_objects_and_raises_the_first_gc_threshold() -> None:
    # In a process of its own: the test run's collector must stay as it is.
    probe = (
        "import gc; from receiver.cli.serve import GC_GEN0_THRESHOLD, tune_gc; "
        "before = gc.get_freeze_count(); tune_gc(); "
        "print(gc.get_threshold()[0] == GC_GEN0_THRESHOLD > 700, gc.get_freeze_count() > before)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["True", "True"]
