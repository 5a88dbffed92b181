"""`status`: the service's mode now, the switch state (since when, from what, the loss window)
and who holds the company's lock. Read-only."""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import operator_task


def _age(seconds: Any) -> str:
    return "unknown" if seconds is None else f"{float(seconds):.0f} s"


def _render(console: Any, d: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"status of {d['company_id']}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("now", overflow="fold")
    mode = d["mode"] or "unknown"
    source = d["mode_source"] or "; ".join(e.get("error", "") for e in d["mode_evidence"])
    table.add_row("mode", f"{mode} (from {source or 'nothing'})")
    table.add_row(".env flags", d["env_mode"] or "unknown")
    switch = d["switch"]
    if switch["state"] == "none":
        table.add_row("switch", "none: no switch to files recorded")
    elif switch["state"] == "unreadable":
        table.add_row("switch", f"unreadable: {switch['error']}")
    else:
        table.add_row("switch", f"{switch['direction']} since {switch['since']}")
        table.add_row("installed from", str(switch.get("source", "unknown")))
        table.add_row("loss window", _age(switch.get("loss_window_s")))
        if switch.get("run"):
            table.add_row("run record", switch["run"])
    lock = d["lock"]
    table.add_row(
        "lock",
        "free"
        if lock is None
        else f"{lock['command']} (pid {lock['pid']} on {lock['host']}, since {lock['started_at']})",
    )
    console.print(table)
    for warning in d["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)


@task(
    auto_shortflags=False,
    help={
        "company": "this company (default RESILIENCE_COMPANY_ID)",
        "json": "print the status as JSON",
    },
)
@operator_task
def status(c: Context, company: str | None = None, json: bool = False) -> None:
    """The service's mode now, the switch (since when, from what, loss window), the lock holder."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.status import service_status

    Output(json).result(service_status(load_settings(), company), _render)
