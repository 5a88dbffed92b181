"""`restore.*`: the emergency switch to files and back, exports and snapshots.

Configured by the operator's settings alone (`.env`, the environment, or the settings file the
embedded stack wrote); every run leaves a record under `RESILIENCE_RUNS_DIR`.
"""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import caller_path, confirm_on_terminal, operator_task, positive_int

WORKERS_HELP = "companies exported at the same time (default: RESILIENCE_RESTORE_WORKERS, 4)"
SWITCH_HELP = {
    "company": "company id (default: RESILIENCE_COMPANY_ID); 'all': every service of "
    "RESILIENCE_TENANTS_FILE, needs --yes or --dry-run",
    "workers": "with --company all: tenants switched at the same time (default: "
    "RESILIENCE_RESTORE_WORKERS, 4)",
    "dry_run": "run the preflight and print the plan; change nothing",
    "yes": "do not ask for confirmation (unattended runs)",
    "force": "use a snapshot older than the limit / discard local changes in the work tree",
    "json": "print the result as JSON",
}


def _render_switch(console: Any, data: dict[str, Any]) -> None:
    from resilience.infra.output import table

    pre = data["preflight"]
    console.print(f"{pre['direction']} for company {pre['company_id']}")
    for number, line in enumerate(pre["plan"], 1):
        console.print(f"  {number}. {line}")
    run = data.get("run")
    if run is None:
        console.print("dry run: nothing changed")
    else:
        rows = [[s["name"], s["status"], f"{s['duration_s']:.3f} s"] for s in run["steps"]]
        console.print(table("steps", ["step", "status", "duration"], rows))
        for step in run["steps"]:
            _render_step_notes(console, step.get("details") or {})
        console.print(f"RTO: {data['rto_s']:.3f} s")
    if data.get("record"):
        console.print(f"run record: {data['record']}")


def _render_step_notes(console: Any, details: dict[str, Any]) -> None:
    """What an operator should see of a step beyond its status: the Buffer form the import
    wrote (and rows of another form left), a health that reports no digest."""
    form = details.get("buffer_form")
    if form:
        minority = ", ".join(f"{n} {f}" for f, n in (form.get("minority") or {}).items())
        console.print(
            f"import wrote {form['form']} Buffers (RESILIENCE_DB_BUFFER_FORM={form['setting']})"
            + (f"; rows in another form, left as they were: {minority}" if minority else "")
        )
    health = details.get("health")
    if isinstance(health, dict) and health.get("digest_check") == "not available":
        console.print("health: mode and company verified; loaded digest not available")


def _render_switch_all(console: Any, data: dict[str, Any]) -> None:
    from resilience.infra.output import table

    rows = []
    for company, one in data["companies"].items():
        if one["ok"]:
            rto = "dry run" if one.get("rto_s") is None else f"{one['rto_s']:.3f} s"
            rows.append([company, "ok", rto, one.get("record") or ""])
        else:
            rows.append([company, one["error"], one["message"], one.get("record") or ""])
    console.print(table(data["direction"], ["company", "status", "RTO / why", "record"], rows))
    console.print(f"{data['switched']} switched, {data['failed']} failed")
    if data.get("record"):
        console.print(f"run record: {data['record']}")


def _switch(
    direction: str,
    company: str | None,
    dry_run: bool,
    yes: bool,
    force: bool,
    json: bool,
    workers: int | None = None,
) -> None:
    from resilience.config import load_settings
    from resilience.errors import InputError
    from resilience.infra.output import Output
    from resilience.restore import commands

    out = Output(json)
    if company == "all":
        if not (yes or dry_run):
            raise InputError(
                "--company all switches every tenant's service: see each plan with --dry-run, "
                "then run with --yes"
            )
        runs = commands.switch_all(
            load_settings(),
            direction,  # type: ignore[arg-type]
            workers=positive_int("--workers", workers),
            dry_run=dry_run,
            force=force,
            progress=out.progress,
        )
        out.result({"ok": True, **runs.to_dict()}, _render_switch_all)
        return
    if workers is not None:
        raise InputError("--workers is for --company all")
    run = commands.switch(
        load_settings(),
        direction,  # type: ignore[arg-type]
        company_id=company,
        dry_run=dry_run,
        force=force,
        confirm=confirm_on_terminal(out, yes),
        progress=out.progress,
        meters=out.meters(),
        unattended=yes,
    )
    out.result({"ok": True, **run.to_dict()}, _render_switch)


@task(auto_shortflags=False, help=SWITCH_HELP)
@operator_task
def to_files(
    c: Context,
    company: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    force: bool = False,
    json: bool = False,
    workers: int | None = None,
) -> None:
    """Emergency switch to files: export (or newest snapshot), code, env, restart, verify."""
    _switch("to-files", company, dry_run, yes, force, json, workers)


@task(auto_shortflags=False, help=SWITCH_HELP)
@operator_task
def to_postgres(
    c: Context,
    company: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    force: bool = False,
    json: bool = False,
    workers: int | None = None,
) -> None:
    """Switch back: import the directory in one transaction, verify digests, env, code, restart."""
    _switch("to-postgres", company, dry_run, yes, force, json, workers)


@task(
    auto_shortflags=False,
    help={
        "company": "one company (default: all)",
        "keep": "how many snapshots to keep",
        "workers": WORKERS_HELP,
        "json": "print the result as JSON",
    },
)
@operator_task
def snapshot(
    c: Context,
    company: str | None = None,
    keep: int | None = None,
    workers: int | None = None,
    json: bool = False,
) -> None:
    """Export every company to a new timestamped snapshot dir, keeping the newest N (cron)."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.restore import commands

    out = Output(json)
    run = commands.snapshot(
        load_settings(),
        company_id=company,
        keep=positive_int("--keep", keep),
        workers=positive_int("--workers", workers),
        meters=out.meters(),
    )

    def human(con: Any, d: dict[str, Any]) -> None:
        companies = ", ".join(f"{k} ({v['key_count']} keys)" for k, v in d["companies"].items())
        con.print(f"snapshot {d['path']}: {companies}")
        standby = d.get("standby")
        if standby and "directory" in standby:
            con.print(f"standby copy of {standby['company_id']}: {standby['directory']}")
        elif standby:
            con.print(f"standby copy of {standby['company_id']} NOT written: {standby['message']}")
        con.print(f"run record: {d['record']}")

    out.result({"ok": True, **run.to_dict()}, human)


@task(
    auto_shortflags=False,
    name="export",
    help={
        "company": "one company (default: every company in the database)",
        "dir": "Baileys directory root to export into (default: RESILIENCE_AUTH_DIR)",
        "workers": WORKERS_HELP,
        "json": "print the result as JSON",
    },
)
@operator_task
def export_files(
    c: Context,
    company: str | None = None,
    dir: str | None = None,
    workers: int | None = None,
    json: bool = False,
) -> None:
    """Export PostgreSQL to Baileys files (no switch): atomic, 0600/0700, with manifest.json."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.restore import commands

    out = Output(json)
    run = commands.export(
        load_settings(),
        company_id=company,
        directory=caller_path(dir) if dir else None,
        progress=out.progress,
        workers=positive_int("--workers", workers),
        meters=out.meters(),
    )

    def human(con: Any, d: dict[str, Any]) -> None:
        for r in d["exports"]:
            con.print(
                f"{r['company_id']}: {r['key_count']} keys -> {r['directory']} "
                f"({len(r['collisions'])} legacy collisions resolved, digest {r['digest'][:12]})"
            )
        con.print(f"run record: {d['record']}")

    out.result({"ok": True, **run.to_dict()}, human)
