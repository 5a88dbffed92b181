"""`monitor.*`: the long-running monitor under PM2 (`invoke health` reads it).

The monitor (`monitor.run`) serves `/` (status page), `/health.json` and `/metrics`.
"""

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
    """The long-running monitor: serves /, /health.json and /metrics; stops on SIGTERM/SIGINT.

    PM2 runs it (`monitor.install`) on RESILIENCE_MONITOR_HOST and RESILIENCE_MONITOR_PORT."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.monitoring.commands import run_monitor

    settings = load_settings()
    out = Output()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def on_cycle(doc: dict[str, Any]) -> None:
        firing = ", ".join(a["rule"] for a in doc["alerts"]["firing"]) or "none"
        out.progress(
            f"[monitor] cycle {doc['cycle']}: {doc['status']} in {doc['cycle_s']:.3f} s; "
            f"firing: {firing}"
        )

    cycles = run_monitor(
        settings,
        stop,
        on_cycle=on_cycle,
        on_listening=lambda url: out.progress(f"[monitor] serving {url}/ (status page)"),
    )
    out.progress(f"[monitor] stopped after {cycles} cycles")


@task(
    auto_shortflags=False,
    help={
        "dry_run": "print the PM2 entry, start nothing",
        "ecosystem_file": "where to write the PM2 ecosystem file (default monitor/ecosystem.json)",
        "log_dir": "the monitor's log directory (default logs)",
        "json": "print the result as JSON",
    },
)
@operator_task
def install(
    c: Context,
    dry_run: bool = False,
    ecosystem_file: str = "monitor/ecosystem.json",
    log_dir: str = "logs",
    json: bool = False,
) -> None:
    """Put the monitor under PM2 (the deployment's PM2_HOME); re-runs replace the entry."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.monitoring.commands import install_monitor

    plan = install_monitor(
        load_settings(),
        launcher(),
        caller_path(ecosystem_file),
        caller_path(log_dir),
        dry_run=dry_run,
    )

    def human(console: Any, d: dict[str, Any]) -> None:
        verb = "would start" if d["dry_run"] else f"started ({d['status']}, pid {d['pid']})"
        console.print(f"monitor {d['app']} {verb} under PM2; page {d['url']}/")
        console.print(f"  ecosystem {d['ecosystem_file']}, log {d['log_file']}")
        console.print(f"  runs: {d['command']}", markup=False)

    Output(json).result({"ok": True, **plan}, human)


@task(auto_shortflags=False, help={"json": "print the result as JSON"})
@operator_task
def remove(c: Context, json: bool = False) -> None:
    """Take the monitor out of PM2."""
    from resilience.config import load_settings
    from resilience.infra.output import Output
    from resilience.monitoring.commands import uninstall_monitor

    removed = uninstall_monitor(load_settings())
    Output(json).result(
        {"ok": True, "removed": removed},
        lambda console, d: console.print("removed" if d["removed"] else "no monitor in PM2"),
    )
