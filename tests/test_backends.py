"""The docker and external backends behind the same Stack interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import load_drill_settings
from resilience.drill.stack import Stack, make_stack
from resilience.drill.stack.docker import DockerStack, engine_available
from resilience.drill.stack.external import ExternalStack
from resilience.errors import ChaosError, ConfigError, StackError

ROOT = Path(__file__).resolve().parents[1]


def test_docker_backend_without_an_engine_says_so(tmp_path: Path) -> None:
    reason = engine_available()
    settings = load_drill_settings(env_file=None, backend="docker", stack_dir=tmp_path)
    stack = make_stack(settings)
    assert isinstance(stack, DockerStack)
    if reason is None:
        pytest.skip("a Docker engine is available here: the refusal cannot be observed")
    assert "no Docker engine" in reason and "RESILIENCE_BACKEND=local" in reason
    with pytest.raises(StackError, match="docker backend: no Docker engine"):
        stack.up()
    assert stack.status()["up"] is False


@pytest.mark.docker
def test_docker_backend_up_and_down(tmp_path: Path) -> None:
    reason = engine_available()
    if reason:
        pytest.skip(f"docker backend: {reason}")
    settings = load_drill_settings(
        env_file=None, backend="docker", stack_dir=tmp_path, tools_dir=ROOT / ".tools"
    )
    with make_stack(settings) as stack:
        with ToxiproxyClient(stack.endpoints.toxiproxy_url) as client:
            assert client.get_proxy("postgres").enabled
        assert stack.status()["up"] is True


def test_external_backend_names_missing_settings(tmp_path: Path) -> None:
    settings = load_drill_settings(env_file=None, backend="external", stack_dir=tmp_path)
    with pytest.raises(ConfigError, match="RESILIENCE_ADMIN_DSN.*RESILIENCE_TOXIPROXY_URL"):
        make_stack(settings).up()
    assert make_stack(settings).status()["up"] is False


@pytest.mark.stack
def test_external_backend_attaches_and_refuses_faults_unless_drill_target(
    stack: Stack, tmp_path: Path
) -> None:
    ep = stack.endpoints
    common = {
        "env_file": None,
        "backend": "external",
        "stack_dir": tmp_path,
        "admin_dsn": ep.admin_dsn,
        "service_dsn": ep.service_dsn,
        "toxiproxy_url": ep.toxiproxy_url,
    }
    external = make_stack(load_drill_settings(**common))
    assert isinstance(external, ExternalStack)
    endpoints = external.up()
    assert endpoints.service_dsn == ep.service_dsn
    assert endpoints.drill_target is False
    status = external.status()
    assert status["up"] is True
    assert ep.admin_dsn not in str(status)
    with ToxiproxyClient(endpoints.toxiproxy_url) as client:
        fault = faults.proxy_disabled(
            client, endpoints.toxiproxy_proxy, allowed=endpoints.drill_target
        )
        with pytest.raises(ChaosError, match="not marked as a drill target"), fault:
            pass
        assert client.get_proxy(endpoints.toxiproxy_proxy).enabled
    external.down()  # starts nothing, so stops nothing
    assert stack.status()["up"] is True
    allowed = make_stack(load_drill_settings(**common, drill_target=True)).up()
    assert allowed.drill_target is True


def test_external_backend_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    settings = load_drill_settings(
        env_file=None,
        backend="external",
        stack_dir=tmp_path,
        admin_dsn="postgresql://u:s3cretpw@127.0.0.1:1/x",
        service_dsn="postgresql://u:s3cretpw@127.0.0.1:1/x",
        toxiproxy_url="http://127.0.0.1:1",
    )
    with pytest.raises(StackError, match="unreachable") as info:
        make_stack(settings).up()
    assert "s3cretpw" not in str(info.value)
    assert "\n" not in str(info.value)
