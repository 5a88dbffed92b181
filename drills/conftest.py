"""Drill fixtures: a seeded company, the stand-in service under PM2, and the drill report.

Every scenario gets its own company and service working directory, so scenarios never see
each other's keys; the report collects one journal per scenario and is written at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from resilience.authstate.dataset import Dataset
from resilience.chaos import faults
from resilience.chaos.toxiproxy import ToxiproxyClient
from resilience.config import Settings
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import DeployedService, standin_on_stack
from resilience.drill.standin.writelog import WRITELOG_FILE, WriteEntry, read_writelog
from resilience.infra.pm2 import Pm2, find_pm2
from resilience.infra.waiting import wait_until
from resilience.restore.switch import Target, read_state, run_switch
from resilience.runs.html import render_html
from resilience.runs.journal import Journal, atomic_write_text
from resilience.service import envfile

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
SEEDED_KEYS = 1313


@dataclass
class DrillService:
    """The service under drill and everything a scenario needs to act on it.

    On the local and docker stacks it is the stand-in, seeded with a fresh company and writing
    a journal of every acknowledged write; on the external backend it is the real service named
    by settings (no seeding, no journal: checks that need one are reported as not available).
    """

    stack: Stack
    deployed: DeployedService
    dataset: Dataset | None
    settings: Settings
    pm2: Pm2
    standin: bool = True

    @property
    def company(self) -> str:
        return self.deployed.company_id

    def target(self) -> Target:
        return Target(self.settings, self.stack.endpoints.service_dsn, self.pm2, self.company)

    def health(self) -> dict[str, Any]:
        if not self.deployed.health_url:
            return {"mode": envfile.current_mode(self.deployed.env_file), "company": self.company}
        body: dict[str, Any] = httpx.get(self.deployed.health_url, timeout=2).json()
        return body

    def wait_healthy(self, mode: str, timeout: float = 30) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            if self.pm2.require(self.deployed.app).status != "online":
                return None
            body = self.health()
            writing = body.get("writes_ok", 0) > 0 or not self.standin
            return body if body.get("mode") == mode and writing else None

        return wait_until(ok, timeout, f"service healthy in {mode} mode")

    def acknowledged_writes(self) -> list[WriteEntry] | None:
        """Every write the stand-in acknowledged; None for a real service (it keeps none)."""
        return read_writelog(self.deployed.workdir / WRITELOG_FILE) if self.standin else None


@pytest.fixture
def drill_service(stack: Stack, settings: Settings, tmp_path: Path) -> Iterator[DrillService]:
    if settings.backend == "external":
        yield from _real_service(stack, settings)
        return
    with standin_on_stack(stack, settings, tmp_path, prefix="drill", keys=SEEDED_KEYS) as s:
        service = DrillService(stack, s.deployed, s.dataset, s.settings, s.pm2)
        service.wait_healthy("postgres")
        yield service


def _real_service(stack: Stack, settings: Settings) -> Iterator[DrillService]:
    """The staging service named by settings; left in PostgreSQL mode afterwards."""
    env_file, auth_root = settings.env_path, settings.auth_root
    if env_file is None or auth_root is None or settings.company_id == "default":
        pytest.fail(
            "external backend: the drill acts on the real service: set RESILIENCE_SERVICE_DIR "
            "(or RESILIENCE_SERVICE_ENV and RESILIENCE_AUTH_DIR), RESILIENCE_COMPANY_ID, "
            "RESILIENCE_PM2_APP and optionally RESILIENCE_HEALTH_URL",
            pytrace=False,
        )
    ep = stack.endpoints
    faults.require_drill_target(ep.drill_target)
    pm2 = Pm2(find_pm2(settings.tools_dir), home=None)
    deployed = DeployedService(
        app=settings.pm2_app,
        workdir=settings.service_dir or env_file.parent,
        env_file=env_file,
        auth_dir=auth_root,
        health_url=settings.health_url or "",
        company_id=settings.company_id,
        fallback_tag=settings.fallback_tag or "",
    )
    service = DrillService(stack, deployed, None, settings, pm2, standin=False)
    try:
        service.wait_healthy("postgres")
        yield service
    finally:
        with ToxiproxyClient(ep.toxiproxy_url) as toxiproxy:
            toxiproxy.reset()
        if read_state(service.target()) is not None:
            run_switch(service.target(), "to-postgres", journal=Journal("drill teardown"))
        else:
            pm2.restart(settings.pm2_app)


class DrillReport:
    """One journal per scenario; written as JSON and one self-contained HTML page."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.journals: list[Journal] = []

    def journal(self, title: str) -> Journal:
        journal = Journal(title)
        self.journals.append(journal)
        return journal

    def write(self) -> tuple[Path, Path]:
        from jinja2 import Environment, select_autoescape

        REPORTS.mkdir(exist_ok=True)
        scenarios = [j.to_dict() for j in self.journals]
        failed = [s for s in scenarios if s.get("status") != "completed"]
        data = {
            "drill": self.name,
            "status": "failed" if failed or not scenarios else "completed",
            "scenarios": scenarios,
        }
        json_path = atomic_write_text(
            REPORTS / f"drill-{self.name}.json", json.dumps(data, indent=2, default=str)
        )
        env = Environment(autoescape=select_autoescape(default=True))
        page = env.from_string(INDEX_TEMPLATE).render(
            name=self.name,
            status=data["status"],
            scenarios=[(s, render_html(s)) for s in scenarios],
        )
        html_path = atomic_write_text(REPORTS / f"drill-{self.name}.html", page)
        return json_path, html_path


# Each scenario's own page is embedded whole (srcdoc), so the file stays self-contained.
INDEX_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drill {{ name }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}iframe{width:100%;height:900px;
border:1px solid #ccc;margin-bottom:2em}.completed{color:#176b28}.failed{color:#b00020}</style>
</head><body>
<h1>drill {{ name }}: <span class="{{ status }}">{{ status }}</span></h1>
<ul>{% for s, _ in scenarios %}<li>{{ s.title }}: <span class="{{ s.status }}">{{ s.status }}
</span>{% if s.measurements and s.measurements.rto_s is defined %}, RTO
{{ s.measurements.rto_s }} s{% endif %}</li>{% endfor %}</ul>
{% for s, page in scenarios %}<h2>{{ s.title }}</h2><iframe srcdoc="{{ page }}"></iframe>
{% endfor %}</body></html>
"""


@pytest.fixture(scope="session")
def rollback_report() -> Iterator[DrillReport]:
    report = DrillReport("rollback")
    yield report
    if report.journals:
        report.write()
