"""The files no machine here runs: `docker/` (no Docker engine, no registry) and the nightly
GitHub Actions workflow. Each is checked against its published schema by check-jsonschema, with
the schemas it vendors (no network: every proxy points at a closed port), and for what it must
say: the services, the regions, the stand-in under PM2, the schedule, both backends, the reports.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ruamel.yaml import YAML

from resilience.config import DrillSettings, Settings
from resilience.drill.demo import DEMO_APP
from resilience.drill.stack import docker as docker_stack
from resilience.drill.standin import service
from resilience.drill.standin.service import settings as standin_settings
from resilience.infra.s3 import REGIONS
from resilience.service.modes import FLAG_NAMES

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "standin.Dockerfile"
ECOSYSTEM = DOCKER / "standin.ecosystem.config.json"
WORKFLOW = ROOT / ".github" / "workflows" / "nightly-chaos.yml"

#: Any attempt to reach the network fails fast: the schemas must all be vendored.
OFFLINE = {
    name: "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
}


def load_yaml(path: Path) -> Any:
    # YAML 1.2 (ruamel): the workflow's `on` stays the string "on", not True as in PyYAML
    return YAML(typ="safe", pure=True).load(path.read_text())


def check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"} | OFFLINE
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation, the forms used in compose.yaml: ${X}, ${X:-default}, ${X:?err}."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value).replace(
        "$$", "$"
    )


def load_entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_entrypoint", DOCKER / "entrypoint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(WORKFLOW)
    return data


# --- the schemas -----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    result = check_jsonschema("vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_matches_the_github_workflow_schema() -> None:
    for schema in ("vendor.github-workflows", "custom.github-workflows-require-timeout"):
        result = check_jsonschema(schema, WORKFLOW)
        assert result.returncode == 0, f"{schema}: {result.stdout}{result.stderr}"


def test_the_schemas_reject_wrong_files(tmp_path: Path) -> None:
    """The checks above are not vacuous: a misspelt key fails each schema."""
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  postgres:\n    imagee: postgres:15\n")
    workflow = tmp_path / "workflow.yml"
    workflow.write_text("on: push\njobs:\n  a:\n    runs_on: ubuntu-24.04\n    steps: []\n")
    assert check_jsonschema("vendor.compose-spec", compose).returncode == 1
    assert check_jsonschema("vendor.github-workflows", workflow).returncode == 1


# --- the compose set -------------------------------------------------------------------------


def test_compose_has_the_staging_like_set(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"postgres", "toxiproxy", "minio-moscow", "minio-eu", "buckets", "seed", "standin"}
    assert expected <= set(services)
    # the images the docker backend uses, so both sets run the same servers
    assert services["postgres"]["image"] == docker_stack.POSTGRES_IMAGE
    assert services["toxiproxy"]["image"] == docker_stack.TOXIPROXY_IMAGE
    for name, service_ in services.items():
        if "image" in service_ and "build" not in service_:
            image = service_["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{name}: unpinned image {image}"
            assert not image.endswith(":latest"), f"{name}: unpinned image {image}"
    # published ports stay on the loopback interface
    for name, service_ in services.items():
        for port in service_.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service_ in compose["services"].items():
        for volume in service_.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_toxiproxy_proxies_postgres(compose: dict[str, Any]) -> None:
    proxies = json.loads((DOCKER / "toxiproxy.json").read_text())
    (proxy,) = proxies
    assert proxy["name"] == DrillSettings.model_fields["toxiproxy_proxy"].default
    upstream_host = proxy["upstream"].split(":")[0]
    assert upstream_host in compose["services"]
    listen_port = proxy["listen"].rsplit(":", 1)[1]
    ports = compose["services"]["toxiproxy"]["ports"]
    assert any(str(p).endswith(f":{listen_port}") for p in ports)


def test_one_minio_per_region_and_its_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    script = services["buckets"]["command"][0]
    assert services["buckets"]["image"].startswith("quay.io/minio/mc:")
    for name, region in REGIONS.items():
        minio = services[f"minio-{name}"]
        assert minio["image"].startswith("quay.io/minio/minio:")
        assert minio["environment"]["MINIO_SITE_REGION"] == region
        bucket = Settings.model_fields[f"s3_bucket_{name}"].default
        made = interpolate(script, {})
        assert f'--region {region} "{name}/{bucket}"' in made
        assert f"http://minio-{name}:9000" in made
        assert services["buckets"]["depends_on"][f"minio-{name}"]["condition"] == "service_healthy"
    # the credentials have no default in the file
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        with pytest.raises(KeyError):
            interpolate(services["minio-eu"]["environment"][key], {})


def test_standin_runs_under_pm2_runtime(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("standin", "seed"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["seed"]["command"] == ["seed"]
    assert services["standin"]["depends_on"]["seed"]["condition"] == (
        "service_completed_successfully"
    )
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^ENTRYPOINT \[.*docker/entrypoint\.py\"\]$", dockerfile, re.MULTILINE)
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    ignore = (DOCKER / "standin.Dockerfile.dockerignore").read_text()
    for source in ("pyproject.toml", "constraints.txt", "resilience/", "docker/entrypoint.py"):
        assert f"!{source}" in ignore
    entrypoint = (DOCKER / "entrypoint.py").read_text()
    assert '"pm2-runtime", ["pm2-runtime", "start", str(ECOSYSTEM)]' in entrypoint
    apps = {app["name"]: app for app in json.loads(ECOSYSTEM.read_text())["apps"]}
    app = apps[DEMO_APP]
    assert Settings.model_fields["pm2_app"].default == DEMO_APP
    assert app["args"] == ["-m", "resilience.drill.standin.service"]
    assert app["interpreter"] == "none"
    assert app["kill_timeout"] > service.DEFAULT_GRACE_MS
    # the forwarder reaches the stand-in's port (it listens on 127.0.0.1 only)
    port = services["standin"]["environment"]["PORT"]
    assert apps["standin-http"]["args"][1] == f"TCP:{service.HOST}:{port}"
    listen = apps["standin-http"]["args"][0].split(":")[1].split(",")[0]
    assert services["standin"]["ports"] == [f"127.0.0.1:18080:{listen}"]


def test_entrypoint_writes_every_setting_the_standin_reads() -> None:
    entrypoint = load_entrypoint()
    source = "".join(
        inspect.getsource(reader)
        for reader in (
            standin_settings.read_config,
            standin_settings._application_name,
            standin_settings._buffer_form,
        )
    )
    read = set(re.findall(r'(?:values\.get\(|_setting\(values, )"([A-Z_]+)"', source))
    assert set(entrypoint.ENV_NAMES) == read | set(FLAG_NAMES)


def test_standin_env_from_compose_is_read_back(compose: dict[str, Any], tmp_path: Path) -> None:
    """The compose environment, written by the entrypoint, is what the stand-in reads."""
    entrypoint = load_entrypoint()
    secrets = {"POSTGRES_PASSWORD": "pw-With:@/chars", "RESILIENCE_COMPANY_ID": "acme_1"}
    environment = {
        key: interpolate(str(value), secrets)
        for key, value in compose["services"]["standin"]["environment"].items()
    }
    path = entrypoint.write_env(tmp_path, environment)
    assert path.stat().st_mode & 0o777 == 0o600
    config = service.read_config(tmp_path, environ={})
    assert config.mode == "postgres"
    assert config.company == "acme_1"
    assert config.database_url == "postgresql://postgres:pw-With:@/chars@toxiproxy:6432/baileys"
    assert config.port == 8080
    assert config.sentry_dsn is None
    assert config.creds_cache_dir == Path("/srv/service/creds-cache")
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(compose["services"]["standin"]["environment"]["DATABASE_URL"], {})


def test_entrypoint_refuses_values_dotenv_would_change() -> None:
    entrypoint = load_entrypoint()
    for bad in ("it's", "a\nb", "back\\slash"):
        with pytest.raises(SystemExit, match="COMPANY_ID"):
            entrypoint.env_text({"COMPANY_ID": bad})
    assert entrypoint.env_text({"PORT": "8080", "UNRELATED": "x"}) == "PORT='8080'\n"
    with pytest.raises(SystemExit, match="unknown command"):
        entrypoint.main(["entrypoint.py", "nope"])


# --- the nightly workflow --------------------------------------------------------------------


def test_workflow_runs_nightly_and_on_demand(workflow: dict[str, Any]) -> None:
    triggers = workflow["on"]
    assert "workflow_dispatch" in triggers
    (schedule,) = triggers["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert (day, month, weekday) == ("*", "*", "*")
    assert minute.isdigit() and hour.isdigit()


def test_workflow_drills_both_backends_and_keeps_the_reports(workflow: dict[str, Any]) -> None:
    (job,) = workflow["jobs"].values()
    assert set(job["strategy"]["matrix"]["backend"]) == {"local", "docker"}
    assert job["strategy"]["fail-fast"] is False
    assert job["env"]["RESILIENCE_BACKEND"] == "${{ matrix.backend }}"
    steps = job["steps"]
    runs = [step for step in steps if step.get("run", "").strip() == "./run drill.all"]
    assert len(runs) == 1
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["if"] == "always()"
    assert upload["with"]["path"].rstrip("/") == "reports"
    assert "${{ matrix.backend }}" in upload["with"]["name"]  # one artifact per backend
    assert steps.index(upload) > steps.index(runs[0])
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]
