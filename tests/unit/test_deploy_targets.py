"""The example configuration of each target in deploy/targets/ passes ``check-config``."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.cli.main import main
from tests.conftest import SECRET
from tests.fakes.webhook_receiver import SECRET as WEBHOOK_SECRET

DEPLOY = Path(__file__).parents[2] / "deploy" / "targets"
#: The secrets each example leaves to the environment, as its header says.
SECRETS = {
    "salesforce": {
        "STAGESYNC_SALESFORCE_CLIENT_SECRET": "example-client-secret",
        "STAGESYNC_SALESFORCE_REFRESH_TOKEN": "example-refresh-token",
    },
    "dynamics": {"STAGESYNC_DYNAMICS_CLIENT_SECRET": "example-client-secret"},
    "zoho": {
        "STAGESYNC_ZOHO_CLIENT_SECRET": "example-client-secret",
        "STAGESYNC_ZOHO_REFRESH_TOKEN": "1000.example.refresh",
    },
    "webhook": {"STAGESYNC_WEBHOOK_SECRET": WEBHOOK_SECRET},
}


def test_every_target_has_an_example() -> None:
    assert sorted(p.stem for p in DEPLOY.glob("*.toml")) == sorted(SECRETS)


@pytest.mark.parametrize("target", sorted(SECRETS))
def test_example_passes_check_config_with_its_secrets_from_the_environment(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STAGESYNC_HUBSPOT_CLIENT_SECRET", SECRET)
    for name, value in SECRETS[target].items():
        monkeypatch.setenv(name, value)
    path = DEPLOY / f"{target}.toml"
    assert main(["check-config", "--config", str(path)]) == 0, capsys.readouterr().err
    assert f"target:          {target}" in capsys.readouterr().out
    for name in SECRETS[target]:
        assert name in path.read_text()  # the header names each secret to set


@pytest.mark.parametrize("target", sorted(SECRETS))
def test_example_without_its_secrets_names_each_missing_one(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STAGESYNC_HUBSPOT_CLIENT_SECRET", SECRET)
    assert main(["check-config", "--config", str(DEPLOY / f"{target}.toml")]) == 1
    lines = capsys.readouterr().err.splitlines()[1:]
    # Salesforce names the token, which the refresh settings may replace, in one line.
    expected = (
        ["STAGESYNC_SALESFORCE_ACCESS_TOKEN"] if target == "salesforce" else list(SECRETS[target])
    )
    assert [line.strip().split(":")[0] for line in lines] == expected
