"""``--company all``: every tenant's service of the tenants file switched side by side, each as
its own switch; one tenant's failure names its company and never stops the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from resilience.config import DrillSettings, Settings
from resilience.drill.service import ServiceUnderTest
from resilience.drill.stack import Stack
from resilience.drill.standin.deploy import standin_on_stack
from resilience.errors import InputError, PartialFailure
from resilience.restore import commands

pytestmark = pytest.mark.stack


def _table(settings: Settings) -> dict[str, Any]:
    return {
        "pm2_app": settings.pm2_app,
        "service_dir": str(settings.service_dir),
        "health_url": settings.health_url,
        "fallback_tag": settings.fallback_tag,
    }


def _write_tenants(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    lines = []
    for company, table in tables.items():
        lines.append(f"[tenants.{company}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if value]
    path.write_text("\n".join(lines) + "\n")


def _steps(one: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step["details"] for step in one["run"]["steps"]}


def test_every_tenant_is_switched_and_a_failure_names_its_company(
    stack: Stack, settings: DrillSettings, tmp_path: Path
) -> None:
    with (
        standin_on_stack(stack, settings, tmp_path / "a", prefix="ta", keys=40,
                         verify_timeout=30.0) as a,
        standin_on_stack(stack, settings, tmp_path / "b", prefix="tb", keys=40,
                         verify_timeout=30.0) as b,
    ):  # fmt: skip
        services = [
            ServiceUnderTest(stack, s.deployed, s.settings, s.pm2, s.dataset) for s in (a, b)
        ]
        for service in services:
            service.wait_mode("postgres")
        tables = {service.company: _table(service.settings) for service in services}
        ghost = "ghost_tenant"
        tenants = tmp_path / "tenants.toml"
        _write_tenants(
            tenants,
            {**tables, ghost: {"pm2_app": "no-such-app", "service_dir": str(tmp_path / "g")}},
        )
        main = a.settings.model_copy(update={"tenants_file": tenants})

        with pytest.raises(PartialFailure) as info:
            commands.switch_all(main, "to-files", workers=2)
        failed = info.value
        assert f"company {ghost}: " in str(failed) and "the others were switched" in str(failed)
        assert failed.exit_code == InputError.exit_code  # the ghost's refusal
        companies = failed.details["companies"]
        assert companies[ghost]["ok"] is False
        assert "PM2 has no app named 'no-such-app'" in companies[ghost]["message"]
        for service in services:
            one = companies[service.company]
            assert one["ok"] is True
            health = service.wait_mode("file")
            assert health["company"] == service.company
            assert health["loaded_digest"] == _steps(one)["export"]["digest"]
            assert Path(one["record"]).parent == main.runs_dir  # each tenant's own run
        assert failed.record is not None  # the run of all, beside each tenant's own

        _write_tenants(tenants, tables)
        back = commands.switch_all(main, "to-postgres", workers=2).to_dict()
        assert (back["switched"], back["failed"]) == (2, 0)
        for service in services:
            assert service.wait_mode("postgres")["company"] == service.company


def test_the_task_asks_for_a_dry_run_or_yes_before_switching_every_tenant() -> None:
    from tasks.restore import _switch

    with pytest.raises(InputError, match="see each plan with --dry-run, then run with --yes"):
        _switch("to-files", "all", False, False, False, True)
    with pytest.raises(InputError, match="--workers is for --company all"):
        _switch("to-files", "acme", True, False, False, True, 2)
