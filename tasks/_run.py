"""What every task shares: error mapping to exit codes, settings, output, confirmation."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit

ROOT = Path(__file__).resolve().parents[1]
F = TypeVar("F", bound=Callable[..., Any])


def operator_task(fn: F) -> F:
    """Map ResilienceError to its exit code and one line on stderr (with the run record's path
    when the run left one); no tracebacks for operators."""

    @functools.wraps(fn)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> Any:
        from resilience.errors import ResilienceError
        from resilience.infra.output import Output

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(c, *args, **kwargs)
        except ResilienceError as exc:
            record = f" (run record: {exc.record})" if exc.record else ""
            Output().error(f"{exc}{record}")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            Output().error("interrupted")
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def confirm_on_terminal(out: Any, yes: bool) -> Callable[[Any], bool]:
    """Ask on the terminal before a switch; without one, --yes is required."""

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
