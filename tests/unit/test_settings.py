"""Settings: environment over TOML, lists, stage sets, one line per problem, check-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.errors import ConfigError
from receiver.settings import DEFAULT_CONTACT_STAGES, DEFAULT_LEAD_STAGES
from receiver.settings_loading import known_env_names, load_settings
from receiver.targets.salesforce.settings import SalesforceSettings
from tests.conftest import SECRET
from tests.support.process import run_cli

BASE = {"STAGESYNC_HUBSPOT_CLIENT_SECRET": SECRET}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stagesync.toml"
    path.write_text(text)
    return path


def problems(config: Path | None = None, /, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config, env)
    return info.value.problems


# -- sources -----------------------------------------------------------------------------


def test_defaults_apply_when_only_the_client_secret_is_set() -> None:
    settings = load_settings(None, BASE)
    assert settings.hubspot_client_secret.get_secret_value() == SECRET
    assert settings.lead_stages == DEFAULT_LEAD_STAGES
    assert settings.contact_stages == DEFAULT_CONTACT_STAGES
    assert settings.database_url == "sqlite:///stagesync.db"
    assert settings.target == "dry-run"
    assert settings.max_body_bytes == 1_048_576
    assert settings.signature_max_age_s == 300
    assert settings.admin_token is None and settings.hubspot_token is None


def test_environment_wins_over_the_toml_file(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'hubspot_client_secret = "from-file-secret"\n'
        'database_url = "sqlite:///file.db"\nmax_attempts = 3\n',
    )
    env = {"STAGESYNC_DATABASE_URL": "sqlite:///env.db", "STAGESYNC_MAX_ATTEMPTS": "7"}
    settings = load_settings(config, env)
    assert settings.database_url == "sqlite:///env.db"
    assert settings.max_attempts == 7
    assert settings.hubspot_client_secret.get_secret_value() == "from-file-secret"


def test_config_path_can_come_from_stagesync_config(tmp_path: Path) -> None:
    config = write(tmp_path, 'max_body_bytes = 2048\nlead_stages = ["lead"]\n')
    settings = load_settings(None, {**BASE, "STAGESYNC_CONFIG": str(config)})
    assert settings.max_body_bytes == 2048
    assert settings.lead_stages == ["lead"]


def test_explicit_config_path_wins_over_stagesync_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "max_attempts = 4\n")
    other = tmp_path / "other.toml"
    other.write_text("max_attempts = 9\n")
    settings = load_settings(chosen, {**BASE, "STAGESYNC_CONFIG": str(other)})
    assert settings.max_attempts == 4


def test_salesforce_table_sets_salesforce_prefixed_settings(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'target = "salesforce"\n'
        "[salesforce]\n"
        'instance_url = "https://acme.my.salesforce.com"\n'
        'access_token = "00Dxx!token"\n'
        'api_version = "v61.0"\n'
        'external_id_field = "HS_Id__c"\n',
    )
    settings = load_settings(config, BASE)
    assert settings.target == "salesforce"
    assert settings.target_settings.instance_url == "https://acme.my.salesforce.com"
    assert settings.target_settings.access_token is not None
    assert settings.target_settings.access_token.get_secret_value() == "00Dxx!token"
    assert settings.target_settings.api_version == "v61.0"
    assert settings.target_settings.external_id_field == "HS_Id__c"


def test_salesforce_environment_variable_wins_over_the_salesforce_table(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'target = "salesforce"\n[salesforce]\napi_version = "v60.0"\n'
        'instance_url = "https://acme.my.salesforce.com"\naccess_token = "00Dxx!token"\n',
    )
    settings = load_settings(config, {**BASE, "STAGESYNC_SALESFORCE_API_VERSION": "v62.0"})
    assert settings.target_settings.api_version == "v62.0"


def test_mapping_tables_are_read_with_empty_values_kept_to_remove_defaults(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path,
        '[mapping.lead]\nTitle = ""\nIndustry = "industry"\n'
        '[mapping.contact]\nDepartment = "dept"\n',
    )
    settings = load_settings(config, BASE)
    assert settings.mapping == {
        "lead": {"Title": "", "Industry": "industry"},
        "contact": {"Department": "dept"},
    }


def test_every_mapping_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = write(tmp_path, "[mapping.lead]\nTitle = 5\n[mapping.foo]\nName = 'x'\n")
    [line] = problems(config, **BASE)
    assert "not ['foo']" in line and "[mapping.lead] values must be text: Title" in line


def test_mapping_table_other_than_lead_or_contact_is_a_problem(tmp_path: Path) -> None:
    config = write(tmp_path, '[mapping.account]\nName = "company"\n')
    lines = problems(config, **BASE)
    assert len(lines) == 1
    assert "[mapping" in lines[0] and "account" in lines[0]


# -- stage lists -------------------------------------------------------------------------


def test_comma_lists_in_the_environment_are_split_and_trimmed() -> None:
    settings = load_settings(
        None,
        {
            **BASE,
            "STAGESYNC_LEAD_STAGES": " lead , subscriber,,",
            "STAGESYNC_CONTACT_STAGES": "customer",
        },
    )
    assert settings.lead_stages == ["lead", "subscriber"]
    assert settings.contact_stages == ["customer"]


def test_toml_arrays_are_stage_lists(tmp_path: Path) -> None:
    config = write(tmp_path, 'lead_stages = ["lead", "other"]\ncontact_stages = ["customer"]\n')
    settings = load_settings(config, BASE)
    assert settings.lead_stages == ["lead", "other"]
    assert settings.contact_stages == ["customer"]


def test_custom_stage_ids_are_allowed_from_the_environment_and_from_toml(tmp_path: Path) -> None:
    from_env = load_settings(None, {**BASE, "STAGESYNC_LEAD_STAGES": "lead,1234567"})
    assert from_env.lead_stages == ["lead", "1234567"]
    config = write(tmp_path, 'contact_stages = ["customer", 1234567]\n')
    from_file = load_settings(config, BASE)
    assert from_file.contact_stages == ["customer", "1234567"]


def test_repeated_stage_in_one_set_is_kept_once() -> None:
    settings = load_settings(None, {**BASE, "STAGESYNC_LEAD_STAGES": "lead,lead,other"})
    assert settings.lead_stages == ["lead", "other"]


def test_overlapping_stage_sets_are_refused_naming_the_stage() -> None:
    lines = problems(
        **BASE, STAGESYNC_LEAD_STAGES="lead,opportunity", STAGESYNC_CONTACT_STAGES="opportunity"
    )
    assert len(lines) == 1
    assert "'opportunity'" in lines[0] and "'lead'" not in lines[0]


def test_overlapping_stage_sets_name_every_shared_stage() -> None:
    lines = problems(
        **BASE,
        STAGESYNC_LEAD_STAGES="lead,1234567,customer",
        STAGESYNC_CONTACT_STAGES="customer,1234567,evangelist",
    )
    assert len(lines) == 1
    assert "'1234567'" in lines[0] and "'customer'" in lines[0]
    assert "'evangelist'" not in lines[0]


def test_overlap_between_the_file_and_the_environment_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, 'contact_stages = ["customer", "lead"]\n')
    lines = problems(config, **BASE)
    assert len(lines) == 1 and "'lead'" in lines[0]


def test_overlap_is_reported_alongside_other_problems() -> None:
    lines = problems(STAGESYNC_LEAD_STAGES="lead", STAGESYNC_CONTACT_STAGES="lead")
    assert any("HUBSPOT_CLIENT_SECRET" in line for line in lines)
    assert any("'lead'" in line for line in lines)


@pytest.mark.parametrize("value", [",", " , ,"])
def test_stage_list_without_any_stage_is_refused(value: str) -> None:
    assert problems(**BASE, STAGESYNC_CONTACT_STAGES=value) == [
        "STAGESYNC_CONTACT_STAGES: must name at least one lifecycle stage"
    ]


def test_explicitly_empty_stage_variable_is_refused_not_replaced_by_defaults() -> None:
    assert problems(**BASE, STAGESYNC_LEAD_STAGES="") == [
        "STAGESYNC_LEAD_STAGES: must name at least one lifecycle stage"
    ]


def test_empty_toml_stage_array_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, "lead_stages = []\n")
    assert problems(config, **BASE) == [
        "STAGESYNC_LEAD_STAGES: must name at least one lifecycle stage"
    ]


# -- problems, one line each -------------------------------------------------------------


def test_missing_client_secret_is_one_line() -> None:
    assert problems() == ["STAGESYNC_HUBSPOT_CLIENT_SECRET: required but not set"]


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_client_secret_is_refused(value: str) -> None:
    lines = problems(STAGESYNC_HUBSPOT_CLIENT_SECRET=value)
    assert len(lines) == 1 and lines[0].startswith("STAGESYNC_HUBSPOT_CLIENT_SECRET:")


def test_each_malformed_url_gets_its_own_line_naming_the_variable() -> None:
    lines = problems(
        **BASE,
        STAGESYNC_PUBLIC_URL="ftp://hooks.example.com/x",
        STAGESYNC_HUBSPOT_API_URL="not a url",
        STAGESYNC_DATABASE_URL="mysql://db/stagesync",
    )
    assert len(lines) == 3
    assert {line.split(":", 1)[0] for line in lines} == {
        "STAGESYNC_PUBLIC_URL",
        "STAGESYNC_HUBSPOT_API_URL",
        "STAGESYNC_DATABASE_URL",
    }


@pytest.mark.parametrize(
    "url", ["sqlite:///", "sqlite://relative.db", "postgresql://", "stagesync.db"]
)
def test_malformed_database_url_is_refused(url: str) -> None:
    lines = problems(**BASE, STAGESYNC_DATABASE_URL=url)
    assert len(lines) == 1 and lines[0].startswith("STAGESYNC_DATABASE_URL:")


@pytest.mark.parametrize(
    "url", ["sqlite:///stagesync.db", "sqlite:////var/lib/s.db", "postgresql://u@db/stagesync"]
)
def test_valid_database_urls_are_accepted(url: str) -> None:
    assert load_settings(None, {**BASE, "STAGESYNC_DATABASE_URL": url}).database_url == url


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    lines = problems(
        STAGESYNC_MAX_BODY_BYTES="lots",
        STAGESYNC_TARGET="nowhere",
        STAGESYNC_PUBLIC_URL="hooks",
    )
    assert len(lines) == 4
    assert all("\n" not in line for line in lines)
    named = " ".join(lines)
    for name in ("HUBSPOT_CLIENT_SECRET", "MAX_BODY_BYTES", "TARGET", "PUBLIC_URL"):
        assert f"STAGESYNC_{name}" in named


def test_unknown_key_in_the_toml_file_is_a_problem(tmp_path: Path) -> None:
    config = write(tmp_path, "lead_stage = ['lead']\n")
    assert problems(config, **BASE) == ["STAGESYNC_LEAD_STAGE: unknown setting"]


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    lines = problems(tmp_path / "absent.toml", **BASE)
    assert len(lines) == 1 and "not found" in lines[0]


def test_malformed_toml_is_one_line(tmp_path: Path) -> None:
    lines = problems(write(tmp_path, "lead_stages = [\n"), **BASE)
    assert len(lines) == 1 and "not valid TOML" in lines[0]


def test_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "stagesync.toml"
    path.write_bytes(b"\xff\xfe")
    assert problems(path, **BASE) == [f"config file {path}: not UTF-8 text, as TOML must be"]


def test_config_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    lines = problems(tmp_path, **BASE)
    assert lines == [f"config file {tmp_path}: cannot be read (Is a directory)"]


def test_mapping_variable_that_is_not_json_is_one_line_beside_the_other_problems() -> None:
    lines = problems(STAGESYNC_MAPPING="notjson", STAGESYNC_MAX_ATTEMPTS="x")
    assert "[mapping]: STAGESYNC_MAPPING must be a JSON object" in lines
    assert any(line.startswith("STAGESYNC_MAX_ATTEMPTS:") for line in lines)
    assert "STAGESYNC_HUBSPOT_CLIENT_SECRET: required but not set" in lines


def test_empty_salesforce_token_url_says_what_it_must_be(tmp_path: Path) -> None:
    config = write(tmp_path, '[salesforce]\ntoken_url = ""\n')
    assert problems(config, **BASE) == [
        "STAGESYNC_SALESFORCE_TOKEN_URL: must be an http/https URL, not empty"
    ]


def test_secrets_lose_the_newline_of_a_mounted_file() -> None:
    settings = load_settings(
        None,
        {
            "STAGESYNC_HUBSPOT_CLIENT_SECRET": f" {SECRET}\n",
            "STAGESYNC_HUBSPOT_ACCESS_TOKEN": "pat-na1-abc\n",
        },
    )
    assert settings.hubspot_client_secret.get_secret_value() == SECRET
    assert settings.hubspot_token == "pat-na1-abc"


@pytest.mark.parametrize("token", ["pat na1", "pat\tna1", "pat-\u00e9", "pat\nna1"])
def test_a_token_that_cannot_be_a_header_value_is_refused_without_echoing_it(token: str) -> None:
    lines = problems(**BASE, STAGESYNC_HUBSPOT_ACCESS_TOKEN=token, STAGESYNC_ADMIN_TOKEN=token)
    assert lines == [
        "STAGESYNC_HUBSPOT_ACCESS_TOKEN: must be printable ASCII without spaces"
        " (it is sent as a header)",
        "STAGESYNC_ADMIN_TOKEN: must be printable ASCII without spaces (it is sent as a header)",
    ]
    assert not any(token in line for line in lines)


def test_problem_lines_never_contain_a_secret_value() -> None:
    lines = problems(
        **BASE,
        STAGESYNC_ADMIN_TOKEN="admin-token-value-xyz",
        STAGESYNC_MAX_ATTEMPTS="zero",
        STAGESYNC_TARGET="salesforce",
        STAGESYNC_SALESFORCE_CLIENT_SECRET="sf-secret-value-xyz",
    )
    text = "\n".join(lines)
    assert lines
    for secret in (SECRET, "admin-token-value-xyz", "sf-secret-value-xyz"):
        assert secret not in text


def test_salesforce_target_without_credentials_is_refused() -> None:
    lines = problems(**BASE, STAGESYNC_TARGET="salesforce")
    assert any("STAGESYNC_SALESFORCE_ACCESS_TOKEN" in line for line in lines)


SALESFORCE = {
    **BASE,
    "STAGESYNC_TARGET": "salesforce",
    "STAGESYNC_SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com",
    "STAGESYNC_SALESFORCE_ACCESS_TOKEN": "00Dtoken",
}


def test_promotion_convert_is_accepted_for_salesforce_and_refused_for_dry_run() -> None:
    settings = load_settings(None, {**SALESFORCE, "STAGESYNC_PROMOTION": "convert"})
    assert settings.promotion == "convert"
    lines = problems(**BASE, STAGESYNC_PROMOTION="convert")
    assert any("not supported by the dry-run target" in line for line in lines)


def test_salesforce_budget_threshold_and_converted_status_are_read() -> None:
    settings = load_settings(
        None,
        {
            **SALESFORCE,
            "STAGESYNC_SALESFORCE_API_BUDGET": "0.75",
            "STAGESYNC_SALESFORCE_BULK_THRESHOLD": "0",
            "STAGESYNC_SALESFORCE_CONVERTED_STATUS": "Closed - Converted",
        },
    )
    target = settings.target_settings
    assert isinstance(target, SalesforceSettings)
    assert (target.api_budget, target.bulk_threshold) == (0.75, 0)
    assert target.converted_status == "Closed - Converted"


@pytest.mark.parametrize("share", ["0", "1.5", "-0.1"])
def test_an_api_budget_outside_0_to_1_is_refused(share: str) -> None:
    lines = problems(**SALESFORCE, STAGESYNC_SALESFORCE_API_BUDGET=share)
    assert any("API_BUDGET" in line for line in lines)


# -- stagesync check-config --------------------------------------------------------------


def test_check_config_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    env = {
        **BASE,
        "STAGESYNC_LEAD_STAGES": "lead,1234567",
        "STAGESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "STAGESYNC_ADMIN_TOKEN": "admin-token-value-xyz",
    }
    result = run_cli(env, "check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "lead, 1234567" in result.stdout
    assert "dry-run" in result.stdout
    for secret in (SECRET, "admin-token-value-xyz"):
        assert secret not in result.stdout + result.stderr


def test_check_config_reads_the_config_option(tmp_path: Path) -> None:
    config = write(tmp_path, 'contact_stages = ["customer", "99"]\n')
    result = run_cli(BASE, "check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "customer, 99" in result.stdout


def test_check_config_exits_1_with_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    env = {
        "STAGESYNC_LEAD_STAGES": "lead,customer",
        "STAGESYNC_DATABASE_URL": "oracle://db",
        "STAGESYNC_PUBLIC_URL": "example.com/hooks",
    }
    result = run_cli(env, "check-config")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert len(lines) == 4
    assert any(line.startswith("STAGESYNC_HUBSPOT_CLIENT_SECRET:") for line in lines)
    assert any(line.startswith("STAGESYNC_DATABASE_URL:") for line in lines)
    assert any(line.startswith("STAGESYNC_PUBLIC_URL:") for line in lines)
    assert any("'customer'" in line for line in lines)


def test_serve_with_bad_settings_exits_1_without_traceback(tmp_path: Path) -> None:
    result = run_cli({"STAGESYNC_CONTACT_STAGES": ""}, "serve", "--port", "1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "STAGESYNC_HUBSPOT_CLIENT_SECRET: required but not set" in result.stderr
    assert "STAGESYNC_CONTACT_STAGES: must name at least one lifecycle stage" in result.stderr


# -- target settings ---------------------------------------------------------------------


def test_an_unknown_target_is_refused_naming_the_targets_there_are() -> None:
    [line] = problems(**BASE, STAGESYNC_TARGET="hubspot")
    assert line.startswith("STAGESYNC_TARGET: must be one of dry-run, salesforce")


def test_a_misspelt_key_in_a_target_table_is_reported_even_when_another_target_runs(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, '[salesforce]\ninstance_ulr = "https://acme.my.salesforce.com"\n')
    assert problems(config, **BASE) == ["STAGESYNC_SALESFORCE_INSTANCE_ULR: unknown setting"]


def test_the_dry_run_target_has_no_target_settings() -> None:
    assert load_settings(None, BASE).target_settings is None


def test_target_secrets_are_among_the_secret_values_to_redact() -> None:
    settings = load_settings(
        None,
        {
            **BASE,
            "STAGESYNC_TARGET": "salesforce",
            "STAGESYNC_SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
            "STAGESYNC_SALESFORCE_ACCESS_TOKEN": "00Dxx!sf-token",
        },
    )
    assert "00Dxx!sf-token" in settings.secret_values()
    assert SECRET in settings.secret_values()


def test_known_environment_names_include_each_targets_own_variables() -> None:
    names = known_env_names()
    assert {"STAGESYNC_TARGET", "STAGESYNC_SALESFORCE_INSTANCE_URL"} <= names
    assert "STAGESYNC_INSTANCE_URL" not in names
