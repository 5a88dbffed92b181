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
        from resilience.output import Output

        logging.basicConfig(level=os.environ.get("RESILIENCE_LOG_LEVEL_CLI", "WARNING"))
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
    from resilience.output import table

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
    from resilience.output import Output
    from resilience.stack import make_stack

    out = Output(json)
    stack = make_stack(_settings(backend=backend))
    out.progress(f"starting the {stack.name} stack ...")
    stack.up()
    out.result(stack.status(), _render_status)


@task(help={"backend": "local (default), docker or external", "json": "print JSON"})
@operator_task
def status(c: Context, backend: str | None = None, json: bool = False) -> None:
    """Show each component of the stack: running or not, pid, port, endpoints (no secrets)."""
    from resilience.output import Output
    from resilience.stack import make_stack

    data = make_stack(_settings(backend=backend)).status()
    Output(json).result(data, _render_status)
    if not data.get("up"):
        raise Exit(code=3)


@task(help={"backend": "local (default), docker or external"})
@operator_task
def down(c: Context, backend: str | None = None) -> None:
    """Stop every process of the stack, also leftovers of a crashed run; remove its data."""
    from resilience.output import Output
    from resilience.stack import make_stack

    make_stack(_settings(backend=backend)).down()
    Output().progress("stack down")


stack_ns = Collection("stack", up, status, down)


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


ns = Collection(stack_ns, lint, test)
