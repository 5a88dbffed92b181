"""The docker backend for real: an engine (our own dockerd where none runs), its images (official
or built here from Debian packages), the stack up with host networking, one switch on it, the
"PostgreSQL stopped" fault as `docker stop`, and afterwards no container, no engine of ours and no
network interface left behind. Skipped only where no engine can be started at all."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from resilience.config import load_drill_settings
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import make_stack
from resilience.drill.stack.docker import LABEL, DockerStack, engine_available
from resilience.drill.stack.engine import EngineUnavailable, OwnEngine, answers, client
from resilience.drill.standin.deploy import standin_on_stack

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.docker


def interfaces() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def test_docker_stack_switches_and_leaves_nothing_behind(tmp_path: Path) -> None:
    settings = load_drill_settings(
        env_file=None, backend="docker", stack_dir=tmp_path / "stack", tools_dir=ROOT / ".tools"
    )
    reason = engine_available(settings.tools_dir)
    if reason:
        pytest.skip(reason)
    own = OwnEngine(settings.tools_dir)
    ours_before = own.running()
    links_before = interfaces()
    stack = make_stack(settings)
    assert isinstance(stack, DockerStack)
    started = time.monotonic()
    try:
        try:
            stack.up()
        except EngineUnavailable as exc:
            pytest.skip(str(exc))
        up_s = time.monotonic() - started
        status = stack.status()
        assert status["up"] is True
        assert {c["running"] for c in status["components"].values()} == {True}
        assert set(status["images"]) == {"postgres", "toxiproxy", "moto"}
        ep = stack.endpoints
        assert "127.0.0.1" in ep.admin_dsn and "127.0.0.1" in ep.service_dsn
        with standin_on_stack(stack, settings, tmp_path, prefix="dock", keys=60) as s:
            service = ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset)
            service.wait_mode("postgres")
            run = service.switch("to-files")
            assert run.outcome.result is not None and run.outcome.result.ok
            service.wait_mode("file")
        # "PostgreSQL stopped" on containers: docker stop of the database container, and back
        stack.stop_postgres()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(ep.admin_dsn, connect_timeout=2).close()
        stack.start_postgres()
        psycopg.connect(ep.admin_dsn, connect_timeout=2).close()
        engine = status["engine"]
    finally:
        stack.down()
    total_s = time.monotonic() - started
    host = engine["host"]
    if engine["ours"] and not ours_before:
        assert not own.running(), "our dockerd still runs after down"
        assert answers(host) is not None
        assert not own.exec_root.exists()
        assert str(own.exec_root) not in Path("/proc/self/mountinfo").read_text()
    else:  # an engine of others: still there, without our containers
        docker = client(host)
        try:
            assert docker.containers.list(all=True, filters={"label": LABEL}) == []
        finally:
            docker.close()
    left = interfaces() - links_before
    assert not left, f"network interfaces left behind: {sorted(left)}"
    assert not any(n == "docker0" or n.startswith(("veth", "br-")) for n in interfaces())
    print(f"docker stack: up {up_s:.1f} s, whole test {total_s:.1f} s")  # shown with -s / -rA
