"""`diagnose`: which incident scenario this is (docs/domain.md §6), its evidence, the next command.

Read-only. Exit codes: 0 healthy, 11 scenario 1 (PostgreSQL unreachable), 12 scenario 2 (data
corrupt), 13 scenario 3 (data partly deleted), 14 scenario 4 (database gone), 2 a wrong DSN,
missing rights or settings, or an unknown company.
"""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from tasks._run import operator_task


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _render(console: Any, d: dict[str, Any]) -> None:
    colour = "green" if d["scenario"] == 0 else "bold red"
    console.print(f"[{colour}]{d['title']}[/] (exit {d['exit_code']})")
    for line in d["evidence"]:
        console.print(f"  - {line}", markup=False)
    exposure = d.get("exposure") or {}
    snap = exposure.get("snapshot")
    console.print(
        f"exposure: newest snapshot of {d['company_id']}: "
        + (_age(snap["age_s"]) + " old" if snap else "none"),
        markup=False,
    )
    for region, info in (exposure.get("regions") or {}).items():
        if info["state"] != "ok":
            console.print(f"  region {region}: {info['state']} ({info['error']})", markup=False)
            continue
        newest, valid = info["newest"], info["newest_valid"]
        console.print(
            f"  region {region}: newest backup "
            + (f"{newest['id']} ({_age(newest['age_s'])} old)" if newest else "none")
            + ", newest validated "
            + (f"{valid['id']} ({_age(valid['age_s'])} old)" if valid else "none"),
            markup=False,
        )
    for warning in d["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    if d["next_command"]:
        console.print("next (runbook):", markup=False)
        if d["preview_command"]:
            console.print(f"  {d['preview_command']}    # look first", markup=False)
        console.print(f"  {d['next_command']}", markup=False)


@task(
    auto_shortflags=False,
    help={
        "company": "only this company (default: every company; commands name "
        "RESILIENCE_COMPANY_ID when nothing is wrong with one in particular)",
        "json": "print the diagnosis as JSON",
    },
)
@operator_task
def diagnose(c: Context, company: str | None = None, json: bool = False) -> None:
    """Which incident scenario this is, with evidence, exposure and the runbook's next command."""
    from resilience.config import load_settings
    from resilience.diagnose.tree import diagnose as walk
    from resilience.infra.output import Output

    result = walk(load_settings(), company)
    doc = {"ok": result.scenario == 0, **result.to_dict()}
    Output(json).result(doc, _render)
    raise Exit(code=result.exit_code)
