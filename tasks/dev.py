"""Quality and numbers: `lint`, `test`, `bench`."""

from __future__ import annotations

import json as json_mod
import sys
import tempfile
from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

from tasks._run import ROOT, operator_task, venv_bin


@task(auto_shortflags=False)
def lint(c: Context) -> None:
    """ruff (lint and format check) on everything, mypy --strict on resilience/ and tasks/."""
    with c.cd(str(ROOT)):
        c.run(f"{venv_bin('ruff')} check .", pty=False)
        c.run(f"{venv_bin('ruff')} format --check .", pty=False)
        c.run(f"{venv_bin('mypy')} resilience tasks", pty=False)


@task(
    auto_shortflags=False,
    help={
        "k": "only tests matching this expression",
        "slow": "also run drills marked slow (nightly)",
        "path": "test paths (default: tests and drills)",
    },
)
def test(c: Context, k: str = "", slow: bool = False, path: str = "") -> None:
    """Lint, type-check, then every test (slow drills only with --slow)."""
    lint(c)
    args = [venv_bin("pytest"), path or "tests drills"]
    if not slow:
        args += ["-m", "'not slow'"]
    if k:
        args += ["-k", repr(k)]
    args += ["--html=reports/tests.html", "--self-contained-html"]
    with c.cd(str(ROOT)):
        c.run(" ".join(args), pty=False)


@task(
    auto_shortflags=False,
    help={
        "sizes": "comma-separated key counts (default 1313,10000,100000)",
        "repeat": "measurements per size (median and min are reported)",
    },
)
@operator_task
def bench(c: Context, sizes: str = "1313,10000,100000", repeat: int = 3) -> None:
    """Restore benchmark: export/import beside the raw COPY + file-write limit, as JSON."""
    from resilience.config import load_drill_settings
    from resilience.drill.bench.restore import bench_restore
    from resilience.drill.stack.local import LocalStack
    from resilience.errors import InputError
    from resilience.infra.output import Output

    try:
        counts = tuple(int(n) for n in sizes.split(",") if n.strip())
    except ValueError:
        raise InputError(f"--sizes must be comma-separated integers, not {sizes!r}") from None
    out = Output(True)
    settings = load_drill_settings(stack_dir=ROOT / ".stack" / "bench", backend="local")
    with LocalStack(settings) as stack, tempfile.TemporaryDirectory() as work:
        result = bench_restore(
            stack.endpoints.admin_dsn,
            sizes=counts,
            work_dir=Path(work),
            repeat=repeat,
            progress=out.progress,
        )
    sys.stdout.write(json_mod.dumps(result, indent=2) + "\n")
