"""Drill fixtures: a seeded company, the stand-in service under PM2, and the drill report.

Every scenario gets its own company and service working directory, so scenarios never see
each other's keys; the report collects one journal per scenario and is written at the end.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import DrillSettings
from resilience.drill.report import DrillReport
from resilience.drill.reporting import targets
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import DeployedService, standin_on_stack
from resilience.errors import ResilienceError
from resilience.infra.pm2 import pm2_for
from resilience.restore.target import file_mode_evidence

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
SEEDED_KEYS = 1313


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "standin_env(NAME=value): .env lines of the drill's stand-in (drill_service)"
    )


@pytest.fixture
def drill_service(
    stack: Stack, settings: DrillSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ServiceUnderTest]:
    """The service a scenario acts on; ``@pytest.mark.standin_env(NAME=value)`` adds `.env`
    lines to the stand-in's (not to another service's)."""
    if settings.backend == "external":
        yield from _real_service(stack, settings, tmp_path)
        return
    kind = settings.drill_service
    marker = request.node.get_closest_marker("standin_env")
    extra_env = {k: str(v) for k, v in marker.kwargs.items()} if marker else None
    with standin_on_stack(
        stack,
        settings,
        tmp_path,
        prefix="drill",
        keys=SEEDED_KEYS,
        kind=kind,
        extra_env=extra_env,
    ) as s:
        service = ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset, kind=kind)
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
        stack, deployed, operator, pm2_for(operator), None, standin=False, writing=True, kind="real"
    )
    try:
        service.wait_mode("postgres")
        yield service
    finally:
        _back_to_postgres(service, operator, ep.toxiproxy_url)


def _back_to_postgres(
    service: ServiceUnderTest, operator: DrillSettings, toxiproxy_url: str
) -> None:
    """Every scenario leaves the real service in PostgreSQL mode, also when it failed: faults
    undone, then the way back when the service is (or may be) in file mode; when that cannot be
    done, the teardown fails saying so and what to run."""
    with ToxiproxyClient(toxiproxy_url) as toxiproxy:
        toxiproxy.reset()
    evidence = file_mode_evidence(operator)
    try:
        if evidence is not None:
            service.switch("to-postgres")
        else:
            service.pm2.restart(operator.pm2_app)
        service.wait_mode("postgres", timeout=120)
    except ResilienceError as exc:
        pytest.fail(
            f"the real service could not be left in PostgreSQL mode ({evidence or 'restart'}): "
            f"{exc}; run restore.to-postgres --company {operator.company_id} by hand",
            pytrace=False,
        )


def _report(name: str, settings: DrillSettings) -> Iterator[DrillReport]:
    """A drill's report, written to reports/drill-<name>.{json,html} once its scenarios ran
    (with reports/history.jsonl and reports/index.html: resilience.drill.report)."""
    report = DrillReport(name, REPORTS, backend=settings.backend)
    yield report
    if report.journals:
        report.write()


@pytest.fixture(scope="session")
def rollback_report(settings: DrillSettings) -> Iterator[DrillReport]:
    if settings.drill_service == "baileys":
        yield from _report("rollback-baileys", settings)
        return
    yield from _report("rollback", settings)


@pytest.fixture(scope="session")
def cache_report(settings: DrillSettings) -> Iterator[DrillReport]:
    yield from _report("cache", settings)


@pytest.fixture(scope="session")  # drills/test_backup.py and drills/test_pitr.py: one report
def backup_report(settings: DrillSettings) -> Iterator[DrillReport]:
    yield from _report("backup", settings)


@pytest.fixture(scope="module")
def cleanup_report(settings: DrillSettings) -> Iterator[DrillReport]:
    yield from _report("cleanup", settings)


@pytest.fixture(scope="module")
def monitoring_report(settings: DrillSettings) -> Iterator[DrillReport]:
    yield from _report("monitoring", settings)


@pytest.fixture(scope="module")
def diagnose_report(settings: DrillSettings) -> Iterator[DrillReport]:
    yield from _report("diagnose", settings)


@pytest.fixture(scope="module")
def mirror_report(settings: DrillSettings) -> Iterator[DrillReport]:
    yield from _report("mirror", settings)


# --- the reports in pytest's own outputs ------------------------------------------------------
_JOURNALS_BEFORE = pytest.StashKey[dict[int, int]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each drill test's scenarios in JUnit XML (properties: report, status, RTO, targets met
    and missed) and, under pytest-html, a link to the drill's report."""
    rep = yield
    funcargs = getattr(item, "funcargs", {})
    reports = [v for v in funcargs.values() if isinstance(v, DrillReport)]
    if not reports:
        return rep
    if rep.when == "setup":
        item.stash[_JOURNALS_BEFORE] = {id(r): len(r.journals) for r in reports}
    elif rep.when == "call":
        before = item.stash.get(_JOURNALS_BEFORE, {})
        for report in reports:
            item.user_properties.append(("drill_report", os.path.relpath(report.html_path, ROOT)))
            for journal in report.journals[before.get(id(report), 0) :]:
                rows, _ = targets.evaluate(journal.measurements)
                prefix = f"scenario[{journal.title}]"
                item.user_properties += [
                    (f"{prefix}.status", journal.status),
                    (f"{prefix}.targets_met", sum(r.met is True for r in rows)),
                    (f"{prefix}.targets_missed", sum(r.met is False for r in rows)),
                ]
                if "rto_s" in journal.measurements:
                    item.user_properties.append((f"{prefix}.rto_s", journal.measurements["rto_s"]))
            _html_link(item, rep, report)
    return rep


def _html_link(item: pytest.Item, rep: pytest.TestReport, report: DrillReport) -> None:
    """A link to the drill's page among pytest-html's extras (when --html is given)."""
    html = item.config.getoption("htmlpath", None)
    if not html:
        return
    from pytest_html import extras  # type: ignore[import-untyped]

    link = os.path.relpath(report.html_path, Path(html).resolve().parent)
    shown = [*getattr(rep, "extras", []), extras.url(link, name="drill report")]
    rep.extras = shown  # type: ignore[attr-defined]
