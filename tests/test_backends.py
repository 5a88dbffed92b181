"""The docker and external backends behind the same Stack interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import load_drill_settings
from resilience.drill.stack import Stack, engine, images, make_stack
from resilience.drill.stack.docker import DockerStack, engine_available
from resilience.drill.stack.external import ExternalStack
from resilience.errors import ChaosError, ConfigError, StackError

ROOT = Path(__file__).resolve().parents[1]


def test_docker_backend_without_dockerd_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No engine answers, no dockerd and no apt: one line that says how to install Docker."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(engine, "DAEMON_PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(engine, "DEFAULT_SOCKET", tmp_path / "no.sock")
    monkeypatch.setattr(engine.shutil, "which", lambda *a, **k: None)
    tools = tmp_path / "tools"
    reason = engine_available(tools)
    assert reason is not None and "dockerd is not installed" in reason
    assert "docs.docker.com/engine/install" in reason and "\n" not in reason
    settings = load_drill_settings(
        env_file=None, backend="docker", stack_dir=tmp_path, tools_dir=tools
    )
    stack = make_stack(settings)
    assert isinstance(stack, DockerStack)
    with pytest.raises(engine.EngineUnavailable, match="dockerd is not installed"):
        engine.acquire(tools, owner=tmp_path)
    assert stack.status()["up"] is False


def test_docker_host_that_does_not_answer_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(StackError, match="DOCKER_HOST=.*does not answer"):
        engine.acquire(tmp_path / "tools", owner=tmp_path)


def test_apt_mirror_is_read_from_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert images.apt_mirror(tmp_path) == "http://mirror.example/debian"
    line = "deb [arch=amd64] http://list.example/debian bookworm main\n"
    (tmp_path / "sources.list").write_text(line)
    assert images.apt_mirror(tmp_path) == "http://list.example/debian"
    assert images.apt_mirror(tmp_path / "none") == images.DEFAULT_MIRROR


@pytest.mark.docker
def test_docker_backend_up_and_down(tmp_path: Path) -> None:
    reason = engine_available(ROOT / ".tools")
    if reason:
        pytest.skip(f"docker backend: {reason}")
    settings = load_drill_settings(
        env_file=None, backend="docker", stack_dir=tmp_path, tools_dir=ROOT / ".tools"
    )
    stack = make_stack(settings)
    try:
        stack.up()
    except engine.EngineUnavailable as exc:
        pytest.skip(str(exc))
    with stack:
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
