"""Runbook index: `invoke --list`. Thin tasks over the `resilience` library.

Each task parses flags, calls the library, formats output (human or --json) and maps library
errors to exit codes with a one-line message.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, task

ROOT = Path(__file__).resolve().parent
os.chdir(ROOT)


def operator_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map ResilienceError to its exit code and one line on stderr; no tracebacks for operators."""

    @functools.wraps(fn)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> Any:
        from resilience.errors import ResilienceError
        from resilience.infra.output import Output

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(c, *args, **kwargs)
        except ResilienceError as exc:
            Output().error(str(exc))
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            Output().error("interrupted")
            raise Exit(code=130) from None

    return wrapper


def _settings(**overrides: Any) -> Any:
    from resilience.config import load_settings

    return load_settings(**overrides)


# --- stack.* ---------------------------------------------------------------------------------
def _render_status(console: Any, data: dict[str, Any]) -> None:
    from resilience.infra.output import table

    rows = [
        [name, "up" if c.get("running") else "DOWN", c.get("pid") or "-", c.get("port") or "-"]
        for name, c in data.get("components", {}).items()
    ]
    console.print(f"backend {data['backend']}: {'up' if data.get('up') else 'not up'}")
    if rows:
        console.print(table("components", ["component", "state", "pid", "port"], rows))
    for key, value in (data.get("endpoints") or {}).items():
        console.print(f"  {key}: {value}")
    if data.get("error"):
        console.print(f"  error: {data['error']}")


@task(help={"backend": "local (default), docker or external", "json": "print JSON"})
@operator_task
def up(c: Context, backend: str | None = None, json: bool = False) -> None:
    """Start the stack (PostgreSQL, Toxiproxy, S3, receivers, PM2) and wait until it answers."""
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output

    out = Output(json)
    stack = make_stack(_settings(backend=backend))
    out.progress(f"starting the {stack.name} stack ...")
    stack.up()
    out.result(stack.status(), _render_status)


@task(help={"backend": "local (default), docker or external", "json": "print JSON"})
@operator_task
def status(c: Context, backend: str | None = None, json: bool = False) -> None:
    """Show each component of the stack: running or not, pid, port, endpoints (no secrets)."""
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output

    data = make_stack(_settings(backend=backend)).status()
    Output(json).result(data, _render_status)
    if not data.get("up"):
        raise Exit(code=3)


@task(help={"backend": "local (default), docker or external"})
@operator_task
def down(c: Context, backend: str | None = None) -> None:
    """Stop every process of the stack, also leftovers of a crashed run; remove its data."""
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output

    make_stack(_settings(backend=backend)).down()
    Output().progress("stack down")


stack_ns = Collection("stack", up, status, down)


# --- restore.* ---------------------------------------------------------------------------------
SWITCH_HELP = {
    "company": "company id (default: RESILIENCE_COMPANY_ID)",
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
        return
    rows = [[s["name"], s["status"], f"{s['duration_s']:.3f} s"] for s in run["steps"]]
    console.print(table("steps", ["step", "status", "duration"], rows))
    console.print(f"RTO: {data['rto_s']:.3f} s")


def _confirm(out: Any, yes: bool) -> Any:
    def ask(facts: Any) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            from resilience.errors import InputError

            raise InputError("no terminal to confirm on: run with --yes for unattended runs")
        out.err.print("plan:")
        for number, line in enumerate(facts.plan, 1):
            out.err.print(f"  {number}. {line}", markup=False)
        return input("proceed? [y/N] ").strip().lower() in ("y", "yes")

    return ask


def _switch(
    direction: str, company: str | None, dry_run: bool, yes: bool, force: bool, json: bool
) -> None:
    from resilience.alerting.channels import Alerts
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output
    from resilience.restore.runner import StepFailed
    from resilience.restore.switch import make_target, run_switch
    from resilience.runs.journal import Journal

    out = Output(json)
    settings = _settings()
    target = make_target(settings, company)
    stack_endpoints = None if settings.backend == "external" else make_stack(settings).endpoints
    alerts = Alerts.from_settings(settings, stack_endpoints)
    journal = Journal(f"restore {direction}")
    journal.start()
    try:
        outcome = run_switch(
            target,
            direction,  # type: ignore[arg-type]
            journal=journal,
            dry_run=dry_run,
            force=force,
            confirm=_confirm(out, yes),
            progress=out.progress,
            alerts=alerts,
        )
    except StepFailed as failed:
        if json:
            out.result({"ok": False, "error": str(failed), "run": failed.result.to_dict()})
        raise
    finally:
        alerts.close()
    out.result(outcome.to_dict(), _render_switch)


@task(help=SWITCH_HELP)
@operator_task
def to_files(
    c: Context,
    company: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    force: bool = False,
    json: bool = False,
) -> None:
    """Emergency switch to files: export (or newest snapshot), code, env, restart, verify."""
    _switch("to-files", company, dry_run, yes, force, json)


@task(help=SWITCH_HELP)
@operator_task
def to_postgres(
    c: Context,
    company: str | None = None,
    dry_run: bool = False,
    yes: bool = False,
    force: bool = False,
    json: bool = False,
) -> None:
    """Switch back: import the directory in one transaction, verify digests, env, code, restart."""
    _switch("to-postgres", company, dry_run, yes, force, json)


@task(
    help={
        "company": "one company (default: all)",
        "keep": "how many snapshots to keep",
        "json": "print the result as JSON",
    }
)
@operator_task
def snapshot(
    c: Context, company: str | None = None, keep: int | None = None, json: bool = False
) -> None:
    """Export every company to a new timestamped snapshot dir, keeping the newest N (cron)."""
    from resilience.authstate.pgstore import PgAuthStore, connect
    from resilience.infra.output import Output
    from resilience.infra.redact import redact_dsn
    from resilience.restore.snapshot import take_snapshot
    from resilience.restore.switch import make_target

    out = Output(json)
    settings = _settings(snapshot_keep=keep)
    target = make_target(settings, company)
    with connect(target.service_dsn) as conn:
        snap = take_snapshot(
            PgAuthStore(conn),
            settings.snapshot_dir,
            [company] if company else None,
            keep=settings.snapshot_keep,
            source=redact_dsn(target.service_dsn),
        )
    data = {
        "path": str(snap.path),
        "taken_at": snap.taken_at.isoformat(),
        "companies": snap.companies,
    }
    out.result(
        data,
        lambda con, d: con.print(
            f"snapshot {d['path']}: "
            + ", ".join(f"{k} ({v['key_count']} keys)" for k, v in d["companies"].items())
        ),
    )


@task(
    name="export",
    help={
        "company": "one company (default: every company in the database)",
        "dir": "Baileys directory root to export into (default: RESILIENCE_AUTH_DIR)",
        "json": "print the result as JSON",
    },
)
@operator_task
def export_files(
    c: Context, company: str | None = None, dir: str | None = None, json: bool = False
) -> None:
    """Export PostgreSQL to Baileys files (no switch): atomic, 0600/0700, with manifest.json."""
    from resilience.authstate.pgstore import PgAuthStore, connect
    from resilience.errors import ConfigError
    from resilience.infra.output import Output
    from resilience.infra.redact import redact_dsn
    from resilience.restore.export import export_all
    from resilience.restore.switch import make_target

    out = Output(json)
    settings = _settings(auth_dir=dir)
    root = settings.auth_root
    if root is None:
        raise ConfigError("give --dir, or set RESILIENCE_AUTH_DIR or RESILIENCE_SERVICE_DIR")
    target = make_target(settings, company)
    with connect(target.service_dsn, timeout=settings.db_connect_timeout) as conn:
        results = export_all(
            PgAuthStore(conn), root, [company] if company else None,
            source=redact_dsn(target.service_dsn), progress=out.progress,
        )  # fmt: skip
    data = {"exports": [r.to_dict() for r in results]}

    def human(con: Any, d: dict[str, Any]) -> None:
        for r in d["exports"]:
            con.print(
                f"{r['company_id']}: {r['key_count']} keys -> {r['directory']} "
                f"({len(r['collisions'])} legacy collisions resolved, digest {r['digest'][:12]})"
            )

    out.result(data, human)


restore_ns = Collection("restore", to_files, to_postgres, snapshot, export_files)


# --- quality and tests -----------------------------------------------------------------------
def _venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@task
def lint(c: Context) -> None:
    """ruff (lint and format check) on everything, mypy --strict on resilience/."""
    c.run(f"{_venv_bin('ruff')} check .", pty=False)
    c.run(f"{_venv_bin('ruff')} format --check .", pty=False)
    c.run(f"{_venv_bin('mypy')} resilience", pty=False)


@task(
    help={
        "k": "only tests matching this expression",
        "slow": "also run drills marked slow (nightly)",
        "path": "test paths (default: tests and drills)",
    }
)
def test(c: Context, k: str = "", slow: bool = False, path: str = "") -> None:
    """Lint, type-check, then every test (slow drills only with --slow)."""
    lint(c)
    args = [_venv_bin("pytest"), path or "tests drills"]
    if not slow:
        args += ["-m", "'not slow'"]
    if k:
        args += ["-k", repr(k)]
    args += ["--html=reports/tests.html", "--self-contained-html"]
    c.run(" ".join(args), pty=False)


# --- drill.* ---------------------------------------------------------------------------------
def _pytest(c: Context, args: list[str], backend: str | None) -> None:
    env = {"RESILIENCE_BACKEND": backend} if backend else {}
    c.run(" ".join([_venv_bin("pytest"), *args]), env=env, pty=False)


@task(help={"backend": "local (default), docker or external", "k": "only scenarios matching"})
def rollback(c: Context, backend: str | None = None, k: str = "") -> None:
    """Emergency rollback drill, all four scenarios: reports/drill-rollback.{html,json}."""
    args = ["drills/test_rollback.py", "-p", "no:cacheprovider"]
    if k:
        args += ["-k", repr(k)]
    _pytest(c, args, backend)


@task(name="all", help={"backend": "local (default), docker or external"})
def all_drills(c: Context, backend: str | None = None) -> None:
    """Every drill, slow ones included (the nightly chaos run)."""
    _pytest(c, ["drills", "-p", "no:cacheprovider"], backend)


drill_ns = Collection("drill", rollback, all_drills)


# --- bench -----------------------------------------------------------------------------------
@task(
    help={
        "sizes": "comma-separated key counts (default 1313,10000,100000)",
        "repeat": "measurements per size (median and min are reported)",
    }
)
@operator_task
def bench(c: Context, sizes: str = "1313,10000,100000", repeat: int = 3) -> None:
    """Restore benchmark: export/import beside the raw COPY + file-write limit, as JSON."""
    import json as json_mod
    import tempfile

    from resilience.config import load_settings
    from resilience.drill.bench.restore import bench_restore
    from resilience.drill.stack.local import LocalStack
    from resilience.errors import InputError
    from resilience.infra.output import Output

    try:
        counts = tuple(int(n) for n in sizes.split(",") if n.strip())
    except ValueError:
        raise InputError(f"--sizes must be comma-separated integers, not {sizes!r}") from None
    out = Output(True)
    settings = load_settings(stack_dir=ROOT / ".stack" / "bench", backend="local")
    with LocalStack(settings) as stack, tempfile.TemporaryDirectory() as work:
        result = bench_restore(
            stack.endpoints.admin_dsn,
            sizes=counts,
            work_dir=Path(work),
            repeat=repeat,
            progress=out.progress,
        )
    sys.stdout.write(json_mod.dumps(result, indent=2) + "\n")


ns = Collection(stack_ns, restore_ns, drill_ns, lint, test, bench)
