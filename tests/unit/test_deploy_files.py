"""Static checks on the deployment files: Dockerfile, compose, Kubernetes, systemd, nginx.

No Docker engine or cluster is needed: the files are parsed and cross-checked against each
other and against the HTTP endpoints the app really serves.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.settings import ENV_PREFIX
from receiver.settings_loading import known_env_names

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
K8S_DIR = DEPLOY_DIR / "kubernetes"
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
NGINX_CONF = DEPLOY_DIR / "nginx.conf"
DOCKERFILE = REPO_ROOT / "Dockerfile"
SYSTEMD_UNIT = DEPLOY_DIR / "systemd" / "stagesync.service"

# The probe endpoints the app serves (see SPEC.md, "HTTP API"). A later test may check
# these against the routes of the Starlette app itself.
APP_ENDPOINTS = {"/healthz", "/readyz"}

# Every environment variable the service reads: one per setting, plus the config file path.
KNOWN_ENV_NAMES = known_env_names() | {ENV_PREFIX + "CONFIG"}

URL_PATH_RE = re.compile(r"https?://[^/\s'\"]+(/[^\s'\"?#]*)")


# --- helpers -----------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY_DIR.rglob("*.yaml"), *DEPLOY_DIR.rglob("*.yml")])


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        objects.extend(doc for doc in load_docs(path) if "kind" in doc)
    return objects


def k8s_object(kind: str, path: Path | None = None) -> dict[str, Any]:
    docs = load_docs(path) if path else k8s_objects()
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def deployment() -> dict[str, Any]:
    return k8s_object("Deployment", K8S_DIR / "deployment.yaml")


def app_container() -> dict[str, Any]:
    containers = deployment()["spec"]["template"]["spec"]["containers"]
    matching = [c for c in containers if c["name"] == "stagesync"]
    assert len(matching) == 1, "the Deployment has no container named stagesync"
    container: dict[str, Any] = matching[0]
    return container


def compose() -> dict[str, Any]:
    docs = load_docs(COMPOSE_FILE)
    assert len(docs) == 1
    return docs[0]


def stagesync_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {name: svc for name, svc in services.items() if "build" in svc}


def healthcheck_text(healthcheck: dict[str, Any]) -> str:
    test = healthcheck["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]


def container_port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"probe port {port!r} is not a named container port"
    return int(named[0])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def systemd_service_section() -> dict[str, list[str]]:
    section: dict[str, list[str]] = {}
    current = None
    for raw in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line
            continue
        if current == "[Service]":
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return section


def env_file_keys(path: Path) -> set[str]:
    """Keys of an env file, including commented-out `#KEY=value` examples."""
    keys = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", raw.strip())
        if match:
            keys.add(match.group(1))
    return keys


# --- every YAML file ---------------------------------------------------------------------


def test_deploy_directory_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY_DIR).as_posix() for p in yaml_files()}
    assert {
        "docker-compose.yml",
        "kubernetes/deployment.yaml",
        "kubernetes/service.yaml",
        "kubernetes/secret.example.yaml",
        "kubernetes/pdb.yaml",
        "kubernetes/kustomization.yaml",
    } <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY_DIR).as_posix())
def test_every_deploy_yaml_file_parses_as_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


# --- Kubernetes --------------------------------------------------------------------------


def test_k8s_liveness_probe_gets_healthz_on_the_container_port() -> None:
    container = app_container()
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert container_port_number(container, probe["port"]) == 8000


def test_k8s_readiness_probe_gets_readyz_on_the_container_port() -> None:
    container = app_container()
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    assert container_port_number(container, probe["port"]) == 8000


def test_k8s_container_listens_where_the_service_sends_traffic() -> None:
    container = app_container()
    args = container.get("args", [])
    assert args[:2] == ["stagesync", "serve"]
    assert args[args.index("--port") + 1] == "8000"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    service = k8s_object("Service")
    target_ports = {p["targetPort"] for p in service["spec"]["ports"]}
    assert {container_port_number(container, p) for p in target_ports} == {8000}


def test_every_k8s_probe_path_is_an_app_endpoint() -> None:
    for kind, probe in probes(app_container()):
        assert "httpGet" in probe, f"{kind} is not an HTTP probe"
        assert probe["httpGet"]["path"] in APP_ENDPOINTS, kind


def test_every_compose_healthcheck_url_is_an_app_endpoint() -> None:
    paths = []
    for name, service in compose()["services"].items():
        if "healthcheck" not in service:
            continue
        for path in URL_PATH_RE.findall(healthcheck_text(service["healthcheck"])):
            assert path in APP_ENDPOINTS, f"{name} probes {path}"
            paths.append(path)
    assert paths, "no HTTP healthcheck found in docker-compose.yml"


def test_deployment_secret_references_exist_in_the_example_secret() -> None:
    secret = k8s_object("Secret", K8S_DIR / "secret.example.yaml")
    example_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    refs = [
        env["valueFrom"]["secretKeyRef"]
        for env in app_container().get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert refs, "the Deployment reads no settings from a Secret"
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in example_keys, f"{ref['key']} missing from secret.example.yaml"
    assert {
        "hubspot-client-secret",
        "hubspot-access-token",
        "admin-token",
        "database-url",
    } <= example_keys


def test_deployment_takes_its_secrets_from_the_secret_not_literals() -> None:
    env = {e["name"]: e for e in app_container()["env"]}
    for name in (
        "STAGESYNC_HUBSPOT_CLIENT_SECRET",
        "STAGESYNC_HUBSPOT_ACCESS_TOKEN",
        "STAGESYNC_ADMIN_TOKEN",
        "STAGESYNC_DATABASE_URL",
    ):
        assert "secretKeyRef" in env[name].get("valueFrom", {}), name
        assert "value" not in env[name], name


def test_deployment_env_names_are_known_settings() -> None:
    for env in app_container()["env"]:
        if env["name"].startswith(ENV_PREFIX):
            assert env["name"] in KNOWN_ENV_NAMES, env["name"]


def test_deployment_runs_two_replicas_with_zero_unavailable_rollouts() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_runs_non_root_with_a_read_only_root_filesystem() -> None:
    pod_security = deployment()["spec"]["template"]["spec"]["securityContext"]
    container = app_container()
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "requests" in container["resources"]
    assert "limits" in container["resources"]


def test_deployment_selector_matches_its_pod_labels() -> None:
    spec = deployment()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_pdb_selector_matches_deployment_pod_labels() -> None:
    pdb = k8s_object("PodDisruptionBudget", K8S_DIR / "pdb.yaml")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_selector_matches_deployment_pod_labels() -> None:
    service = k8s_object("Service", K8S_DIR / "service.yaml")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_kustomization_lists_every_manifest_except_the_example_secret() -> None:
    kustomization = load_docs(K8S_DIR / "kustomization.yaml")[0]
    resources = set(kustomization["resources"])
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), resource
    manifests = {
        p.name
        for p in K8S_DIR.glob("*.yaml")
        if p.name not in {"kustomization.yaml", "secret.example.yaml"}
    }
    assert resources == manifests
    assert "secret.example.yaml" not in resources


# --- docker compose and nginx --------------------------------------------------------------


def test_compose_runs_two_stagesync_replicas_on_postgres() -> None:
    services = compose()["services"]
    replicas = stagesync_services()
    assert len(replicas) == 2
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in healthcheck_text(services["postgres"]["healthcheck"])
    for name, svc in replicas.items():
        assert svc["build"]["context"] == "..", name
        assert (DEPLOY_DIR / svc["build"]["context"] / "Dockerfile").is_file()
        assert svc["environment"]["STAGESYNC_DATABASE_URL"].startswith("postgresql://"), name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert "/healthz" in healthcheck_text(svc["healthcheck"]), name
        assert ".env" in svc["env_file"], name


def test_compose_env_example_exists_for_the_env_file() -> None:
    assert (DEPLOY_DIR / ".env.example").is_file()


def test_nginx_balances_across_every_compose_replica() -> None:
    conf = NGINX_CONF.read_text(encoding="utf-8")
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream, "nginx.conf has no upstream block"
    servers = set(re.findall(r"^\s*server\s+([\w.-]+):8000\b", upstream.group(2), re.M))
    assert servers == set(stagesync_services())
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    assert re.search(r"proxy_set_header\s+X-Forwarded-Proto\s", conf)
    assert re.search(r"proxy_set_header\s+X-Forwarded-Host\s", conf)


def test_nginx_is_published_on_port_8080() -> None:
    proxy = compose()["services"]["proxy"]
    assert any(str(port).startswith("8080:") for port in proxy["ports"])
    assert any(v.startswith("./nginx.conf:") for v in proxy["volumes"])


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_healthcheck_gets_healthz() -> None:
    healthchecks = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    check = healthchecks[0]
    _, _, command = check.partition("CMD ")
    # A malformed JSON exec form silently turns into a shell command: insist on valid JSON.
    argv = json.loads(command)
    assert argv[0] == "python"
    assert URL_PATH_RE.findall(" ".join(argv)) == ["/healthz"]
    assert "http://127.0.0.1:8000/healthz" in command


def test_dockerfile_runtime_stage_runs_as_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_serves_on_all_interfaces_port_8000() -> None:
    stage = final_stage()
    cmds = [args for keyword, args in stage if keyword == "CMD"]
    assert json.loads(cmds[-1]) == ["stagesync", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert ("EXPOSE", "8000") in stage
    env = " ".join(args for keyword, args in stage if keyword == "ENV")
    assert "STAGESYNC_DATABASE_URL=sqlite:////data/stagesync.db" in env
    assert any(keyword == "VOLUME" and "/data" in args for keyword, args in stage)


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    instructions = dockerfile_instructions()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) >= 2
    args = " ".join(args for keyword, args in instructions if keyword == "ARG")
    assert "python:3.11-slim" in args or all("python:3.11-slim" in f for f in froms)


def test_dockerignore_keeps_databases_and_env_files_out_of_the_image() -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in (".git", ".venv", "**/*.db", ".env"):
        assert pattern in ignored, pattern
    for needed in ("receiver", "pyproject.toml", "README.md"):
        assert needed not in ignored, needed


# --- systemd -------------------------------------------------------------------------------


def test_systemd_unit_execstart_runs_stagesync_serve() -> None:
    service = systemd_service_section()
    assert len(service["ExecStart"]) == 1
    argv = shlex.split(service["ExecStart"][0])
    assert Path(argv[0]).is_absolute()
    assert Path(argv[0]).name == "stagesync"
    assert argv[1] == "serve"


def test_systemd_unit_is_hardened_and_restarts_on_failure() -> None:
    service = systemd_service_section()
    expected = {
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "stagesync",
        "EnvironmentFile": "/etc/stagesync/env",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service.get("DynamicUser") == ["yes"] or service.get("User") == ["stagesync"]


def test_systemd_default_database_lives_in_the_state_directory() -> None:
    environment = systemd_service_section()["Environment"]
    assert "STAGESYNC_DATABASE_URL=sqlite:////var/lib/stagesync/stagesync.db" in environment


# --- example environment files -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [DEPLOY_DIR / "systemd" / "env.example", DEPLOY_DIR / ".env.example"],
    ids=["systemd", "compose"],
)
def test_env_examples_only_name_known_settings(path: Path) -> None:
    keys = {key for key in env_file_keys(path) if key.startswith(ENV_PREFIX)}
    assert "STAGESYNC_HUBSPOT_CLIENT_SECRET" in keys
    assert keys <= KNOWN_ENV_NAMES, keys - KNOWN_ENV_NAMES
