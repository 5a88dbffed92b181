"""`stack.*`: the embedded stack for drills and tests, and the deployment it describes."""

from __future__ import annotations

from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from tasks._run import operator_task

BACKEND_HELP = "local (default), docker or external"


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
    if data.get("settings_file"):
        console.print(
            f"settings for the operator's tasks: {data['settings_file']} (read by every task "
            f"run here; company {data['company_id']}, PM2 app {data['pm2_app']})"
        )
    if data.get("error"):
        console.print(f"  error: {data['error']}")


@task(
    auto_shortflags=False,
    help={
        "backend": BACKEND_HELP,
        "json": "print JSON",
        "no_service": "do not seed the demo company nor start the stand-in service",
    },
)
@operator_task
def up(
    c: Context, backend: str | None = None, json: bool = False, no_service: bool = False
) -> None:
    """Start the stack (PostgreSQL, Toxiproxy, S3, fakes, PM2, stand-in) and write its settings."""
    from resilience.config import load_drill_settings
    from resilience.drill.demo import deploy_demo, write_settings_file
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output

    out = Output(json)
    settings = load_drill_settings(backend=backend)
    stack = make_stack(settings)
    out.progress(f"starting the {stack.name} stack ...")
    stack.up()
    data = stack.status()
    if not no_service and settings.backend == "local":
        out.progress("seeding company demo and starting the stand-in service under PM2 ...")
        operator = deploy_demo(stack, settings)
        data["settings_file"] = str(write_settings_file(operator))
        data["company_id"], data["pm2_app"] = operator.company_id, operator.pm2_app
    out.result(data, _render_status)


@task(auto_shortflags=False, help={"backend": BACKEND_HELP, "json": "print JSON"})
@operator_task
def status(c: Context, backend: str | None = None, json: bool = False) -> None:
    """Show each component of the stack: running or not, pid, port, endpoints (no secrets)."""
    from resilience.config import load_drill_settings
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output

    data = make_stack(load_drill_settings(backend=backend)).status()
    Output(json).result(data, _render_status)
    if not data.get("up"):
        raise Exit(code=3)


@task(auto_shortflags=False, help={"backend": BACKEND_HELP})
@operator_task
def down(c: Context, backend: str | None = None) -> None:
    """Stop every process of the stack, also leftovers of a crashed run; remove all it made."""
    from resilience.config import load_drill_settings
    from resilience.drill.demo import remove_demo
    from resilience.drill.stack import make_stack
    from resilience.infra.output import Output

    settings = load_drill_settings(backend=backend)
    make_stack(settings).down()
    remove_demo(settings.stack_dir)  # the stand-in's work tree, snapshots, backups, settings
    Output().progress(f"stack down; what it made in {settings.stack_dir} removed")
