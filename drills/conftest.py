"""Drill fixtures: a seeded company, the stand-in service under PM2, and the drill report.

Every scenario gets its own company and service working directory, so scenarios never see
each other's keys; the report collects one journal per scenario and is written at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.report import DrillReport
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import DeployedService, standin_on_stack
from resilience.infra.pm2 import pm2_for
from resilience.restore.state import SwitchState
from resilience.restore.target import make_target

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
SEEDED_KEYS = 1313


@pytest.fixture
def drill_service(
    stack: Stack, settings: DrillSettings, tmp_path: Path
) -> Iterator[ServiceUnderTest]:
    if settings.backend == "external":
        yield from _real_service(stack, settings, tmp_path)
        return
    with standin_on_stack(stack, settings, tmp_path, prefix="drill", keys=SEEDED_KEYS) as s:
        service = ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset)
        service.wait_mode("postgres")
        yield service


def _real_service(
    stack: Stack, settings: DrillSettings, tmp_path: Path
) -> Iterator[ServiceUnderTest]:
    """The staging service named by settings; left in PostgreSQL mode afterwards."""
    env_file, auth_root = settings.env_path, settings.auth_root
    if env_file is None or auth_root is None or settings.company_id == "default":
        pytest.fail(
            "external backend: the drill acts on the real service: set RESILIENCE_SERVICE_DIR "
            "(or RESILIENCE_SERVICE_ENV and RESILIENCE_AUTH_DIR), RESILIENCE_COMPANY_ID, "
            "RESILIENCE_PM2_APP and RESILIENCE_HEALTH_URL (or the log patterns of its mode "
            "lines: the drill reads the mode from the service, never from its .env)",
            pytrace=False,
        )
    ep = stack.endpoints
    faults.require_drill_target(ep.drill_target)
    operator = settings.model_copy(update={"runs_dir": tmp_path / "runs"})
    deployed = DeployedService(
        app=settings.pm2_app,
        workdir=settings.service_dir or env_file.parent,
        env_file=env_file,
        auth_dir=auth_root,
        health_url=settings.health_url or "",
        company_id=settings.company_id,
        fallback_tag=settings.fallback_tag or "",
    )
    service = ServiceUnderTest(
        stack, deployed, operator, pm2_for(operator), None, standin=False, writing=True
    )
    try:
        service.wait_mode("postgres")
        yield service
    finally:
        with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
            toxiproxy.reset()
        if SwitchState.read(make_target(operator).state_file) is not None:
            service.switch("to-postgres")
        else:
            service.pm2.restart(settings.pm2_app)


def _report(name: str) -> Iterator[DrillReport]:
    """A drill's report, written to reports/drill-<name>.{json,html} once its scenarios ran."""
    report = DrillReport(name, REPORTS)
    yield report
    if report.journals:
        report.write()


@pytest.fixture(scope="session")
def rollback_report() -> Iterator[DrillReport]:
    yield from _report("rollback")


@pytest.fixture(scope="session")
def cache_report() -> Iterator[DrillReport]:
    yield from _report("cache")


@pytest.fixture(scope="module")
def backup_report() -> Iterator[DrillReport]:
    yield from _report("backup")


@pytest.fixture(scope="module")
def cleanup_report() -> Iterator[DrillReport]:
    yield from _report("cleanup")
