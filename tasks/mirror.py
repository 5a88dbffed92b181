"""`mirror.*`: the live file mirror (a Baileys directory per company, current with PostgreSQL)
and its change feed. `restore.to-files` installs the mirror's copy when PostgreSQL is
unreachable and the mirror is fresher than the newest snapshot."""

from __future__ import annotations

import signal
import threading
from typing import Any

from invoke.context import Context
from invoke.tasks import task

from tasks._run import caller_path, launcher, operator_task


@task(name="run", auto_shortflags=False)
@operator_task
def run_(c: Context) -> None:
    """The long-running mirror: a full export, then every change; stops on SIGTERM/SIGINT.

    PM2 runs it (`mirror.install`); the directories and position.json are under
    RESILIENCE_MIRROR_DIR."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.mirror.commands import run_mirror

    settings = load_settings()
    out = Output()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cycles = run_mirror(settings, stop, on_event=lambda m: out.progress(f"[mirror] {m}"))
    out.progress(f"[mirror] stopped after {cycles} cycles")


@task(
    auto_shortflags=False,
    help={
        "dry_run": "print the PM2 entry, start nothing",
        "ecosystem_file": "where to write the PM2 ecosystem file (default mirror/ecosystem.json)",
        "log_dir": "the mirror's log directory (default logs)",
        "json": "print the result as JSON",
    },
)
@operator_task
def install(
    c: Context,
    dry_run: bool = False,
    ecosystem_file: str = "mirror/ecosystem.json",
    log_dir: str = "logs",
    json: bool = False,
) -> None:
    """Put the mirror under PM2 (the deployment's PM2_HOME); re-runs replace the entry."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.mirror.commands import install_mirror

    plan = install_mirror(
        load_settings(),
        launcher(),
        caller_path(ecosystem_file),
        caller_path(log_dir),
        dry_run=dry_run,
    )

    def human(console: Any, d: dict[str, Any]) -> None:
        verb = "would start" if d["dry_run"] else f"started ({d['status']}, pid {d['pid']})"
        console.print(f"mirror {d['app']} {verb} under PM2, into {d['mirror_dir']}")
        console.print(f"  ecosystem {d['ecosystem_file']}, log {d['log_file']}")
        console.print(f"  runs: {d['command']}", markup=False)

    Output(json).result({"ok": True, **plan}, human)


@task(auto_shortflags=False, help={"json": "print the result as JSON"})
@operator_task
def remove(c: Context, json: bool = False) -> None:
    """Take the mirror out of PM2 (its directories stay)."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.mirror.commands import uninstall_mirror

    removed = uninstall_mirror(load_settings())
    Output(json).result(
        {"ok": True, "removed": removed},
        lambda console, d: console.print("removed" if d["removed"] else "no mirror in PM2"),
    )


FEED_HELP = {"dry_run": "show the state and the plan, change nothing", "json": "print as JSON"}


def _feed(action: str, dry_run: bool, json: bool) -> None:
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.mirror.commands import change_feed

    doc = change_feed(load_settings(), action, dry_run=dry_run)

    def human(console: Any, d: dict[str, Any]) -> None:
        state = d.get("after") or d["before"]
        verb = f"would {action}" if d["dry_run"] else f"{action}ed"
        console.print(f"change feed {verb} on {d['database']}:", markup=False)
        for line in d["plan"]:
            console.print(f"  {line}", markup=False)
        console.print(
            f"installed: {state['installed']}; pending changes: {state['pending_changes']}"
        )
        if d.get("record"):
            console.print(f"run record: {d['record']}")

    Output(json).result({"ok": True, **doc}, human)


@task(auto_shortflags=False, help=FEED_HELP)
@operator_task
def feed_install(c: Context, dry_run: bool = False, json: bool = False) -> None:
    """Install the change feed (a change table, its trigger functions and triggers) at once.

    The change table, its trigger functions, six statement triggers and one row trigger on the
    auth tables, in one transaction; idempotent. Needs TRIGGER on the auth tables and CREATE on
    their schema (a missing privilege is named; nothing is half installed)."""
    _feed("install", dry_run, json)


@task(auto_shortflags=False, help=FEED_HELP)
@operator_task
def feed_remove(c: Context, dry_run: bool = False, json: bool = False) -> None:
    """Remove the change feed (triggers, functions, change table) in one transaction."""
    _feed("remove", dry_run, json)


@task(auto_shortflags=False, help={"json": "print the result as JSON"})
@operator_task
def status(c: Context, json: bool = False) -> None:
    """The mirror's position, lag, state and repairs, and the feed's backlog.

    Exit 1 when the lag is over RESILIENCE_MIRROR_LAG_ALERT (or there is no position)."""
    from invoke.exceptions import Exit

    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.mirror.commands import mirror_status

    doc = mirror_status(load_settings())

    def human(console: Any, d: dict[str, Any]) -> None:
        p = d.get("position")
        if p is None:
            console.print(f"no mirror position in {d['mirror_dir']}")
        else:
            console.print(
                f"mirror {p['state']}: confirmed {p['confirmed_at']}, lag {d['lag_s']:.1f} s "
                f"(alert over {d['lag_alert_s']:g} s), pending {p['pending_changes']}, "
                f"repairs {p['reconcile_repairs_total']}"
            )
        fd = d.get("feed") or {}
        if "error" in fd:
            console.print(f"feed: {fd['error']}", markup=False)
        else:
            console.print(
                f"feed installed: {fd.get('installed')}, backlog {fd.get('pending_changes')}"
            )

    Output(json).result({"ok": not doc["lagging"], **doc}, human)
    if doc["lagging"]:
        raise Exit(code=1)
