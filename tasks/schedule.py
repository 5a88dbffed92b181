"""`schedule.*`: install (or remove) the crontab block and the PM2 ecosystem file that run the
operator's periodic tasks (snapshots, cleanup, and backups and monitoring as they exist)."""

from __future__ import annotations

import json as json_module
from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import caller_path, launcher, operator_task

COMMON_HELP = {
    "crontab_file": "write this file instead of the user's crontab (a scratch crontab)",
    "json": "print the result as JSON",
}


def _render(console: Any, data: dict[str, Any]) -> None:
    if data["crontab_installed"]:
        console.print("crontab block:", markup=False)
        console.print(data["crontab_block"], markup=False, end="")
    else:
        console.print("no crontab on this host: the PM2 ecosystem file alone", markup=False)
    console.print(f"PM2 ecosystem file: {data['ecosystem_file']}", markup=False)
    if not data["crontab_installed"] and not data.get("dry_run"):
        console.print(f"start it: pm2 start {data['ecosystem_file']}", markup=False)
    if data.get("dry_run"):
        console.print("dry run: nothing written")


@task(
    auto_shortflags=False,
    help={
        **COMMON_HELP,
        "dry_run": "print the crontab block and the PM2 ecosystem file; write nothing",
        "log_dir": "where the jobs append their output (default: logs/ in the clone, or in "
        "the working directory of the installed command)",
        "ecosystem_file": "where the PM2 ecosystem file goes (default: schedule.ecosystem.json "
        "beside logs/)",
    },
)
@operator_task
def install(
    c: Context,
    dry_run: bool = False,
    crontab_file: str | None = None,
    log_dir: str | None = None,
    ecosystem_file: str | None = None,
    json: bool = False,
) -> None:
    """Write the schedule: crontab block (snapshot /15 min, cleanup 03:00 UTC, ...) and PM2 file."""
    from resilience.infra.output import Output
    from resilience.maintenance import schedule
    from tasks import ns

    launch = launcher()
    logs = caller_path(log_dir) if log_dir else launch.cwd / "logs"
    crontab = caller_path(crontab_file) if crontab_file else None
    from resilience.config import load_settings

    names = list(ns.task_names)
    if load_settings().pitr_dsn is None:  # no point-in-time recovery here: no base backups
        names = [n for n in names if n != "backup.base"]
    plan = schedule.plan_install(
        names,
        launch,
        logs,
        caller_path(ecosystem_file) if ecosystem_file else launch.cwd / "schedule.ecosystem.json",
        crontab,
    )
    if not dry_run:
        schedule.install(plan, logs, crontab)
    pm2_json = json_module.dumps(plan.ecosystem, indent=2)
    data = {"ok": True, "dry_run": dry_run, **plan.to_dict()}
    out = Output(json)
    out.result(data, _render)
    if dry_run and not json:
        out.console.print(pm2_json, markup=False)


@task(
    auto_shortflags=False,
    help={**COMMON_HELP, "dry_run": "print the crontab without the block; write nothing"},
)
@operator_task
def remove(
    c: Context, dry_run: bool = False, crontab_file: str | None = None, json: bool = False
) -> None:
    """Take the managed block out of the crontab (other lines kept)."""
    from resilience.infra.output import Output
    from resilience.maintenance import schedule

    crontab = caller_path(crontab_file) if crontab_file else None
    if dry_run:
        text = schedule.remove_block(schedule.read_crontab(crontab))
    else:
        text = schedule.uninstall(crontab)
    Output(json).result(
        {"ok": True, "dry_run": dry_run, "crontab": text},
        lambda con, d: con.print(d["crontab"] or "(empty crontab)", markup=False),
    )
