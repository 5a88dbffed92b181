"""`runs.*`: the operator's run records (RESILIENCE_RUNS_DIR), listed and pruned."""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import operator_task, positive_int


def _rows(console: Any, d: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"runs in {d['runs_dir']}", title_justify="left")
    for column in ("time (UTC)", "command", "company", "outcome", "RTO", "record"):
        table.add_column(column, overflow="fold")
    for run in d["runs"]:
        rto = run["rto_s"]
        table.add_row(
            (run["started_at"] or "?")[:19].replace("T", " "),
            run["command"],
            run["company_id"] or "",
            run["outcome"],
            "" if rto is None else f"{rto:.1f} s",
            run["path"].rsplit("/", 1)[-1],
        )
    console.print(table)


@task(
    name="list",
    auto_shortflags=False,
    help={"limit": "the newest N records (default 50)", "json": "print the records as JSON"},
)
@operator_task
def list_(c: Context, limit: int | None = None, json: bool = False) -> None:
    """The run records, newest first: time, command, company, outcome and RTO."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.runs.listing import list_runs

    settings = load_settings()
    runs = list_runs(settings.runs_dir, limit=positive_int("--limit", limit) or 50)
    doc = {"ok": True, "runs_dir": str(settings.runs_dir), "runs": [r.to_dict() for r in runs]}
    Output(json).result(doc, _rows)


def _pruned(console: Any, d: dict[str, Any]) -> None:
    gone = d.get("deleted", d.get("would_delete", []))
    verb = "deleted" if "deleted" in d else "would delete (dry run; --yes deletes)"
    console.print(
        f"{verb}: {len(gone)} record(s); kept {d['kept']} (retention {d['keep_days']} days, "
        f"dry runs and refusals {d['keep_days_minor']})",
        markup=False,
    )


@task(
    auto_shortflags=False,
    help={"yes": "delete (without it: a dry run)", "json": "print the result as JSON"},
)
@operator_task
def prune(c: Context, yes: bool = False, json: bool = False) -> None:
    """Delete run records past RESILIENCE_RUNS_KEEP_DAYS (dry runs, refusals: a shorter time)."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.runs.listing import prune_runs

    Output(json).result(prune_runs(load_settings(), dry_run=not yes), _pruned)
