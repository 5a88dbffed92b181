"""`check`: is this host ready for an incident? Exit 0 all OK, 1 warnings, 2 failures."""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from tasks._run import operator_task

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _render(console: Any, d: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="baileys-resilience check", title_justify="left")
    for column in ("", "check", "found", "fix"):
        table.add_column(column, overflow="fold")
    for f in d["findings"]:
        table.add_row(
            Text(f["status"].upper(), style=_STYLE[f["status"]]),
            Text(f["name"]),
            Text(f["found"]),
            Text(f["fix"]),
        )
    console.print(table)
    counts = d["counts"]
    console.print(
        f"{counts['ok']} OK, {counts['warn']} WARN, {counts['fail']} FAIL "
        f"in {d['duration_s']:.1f} s (exit {d['exit_code']})",
        markup=False,
    )


@task(
    auto_shortflags=False,
    help={
        "send_test": "also send a real test alert through Sentry and Telegram",
        "json": "print the findings as JSON",
    },
)
@operator_task
def check(c: Context, send_test: bool = False, json: bool = False) -> None:
    """Is this host ready for an incident: every part tried, each OK, WARN or FAIL with its fix."""
    from resilience.check import run_checks, settings_failure
    from resilience.config import load_settings
    from resilience.errors import ConfigError
    from resilience.infra.output import Output

    try:
        settings = load_settings()
    except ConfigError as exc:
        report = settings_failure(exc)
    else:
        report = run_checks(settings, send_test=send_test)
    Output(json).result(report.to_dict(), _render)
    raise Exit(code=report.exit_code)
