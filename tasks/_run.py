"""What every task shares: error mapping to exit codes, settings, output, confirmation."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.context import Context
from invoke.exceptions import Exit

if TYPE_CHECKING:
    from resilience.infra.commandline import Launcher

ROOT = Path(__file__).resolve().parents[1]
#: Set by `./run` to the directory it was called from, before it changes into the project.
CALLER_DIR_VARIABLE = "BAILEYS_RESILIENCE_CALLER_DIR"
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
            if kwargs.get("json"):  # every outcome is one JSON document on stdout
                Output(True).result(error_document(exc))
            Output().error(f"{exc}{record}")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            Output().error("interrupted")
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def error_document(exc: Any) -> dict[str, Any]:
    """The JSON of a failed run: ok, error, exit_code, record, and the facts it carries (a
    failed run of steps carries its run: steps, undo steps and what they carried back)."""
    doc: dict[str, Any] = {
        "ok": False,
        "error": str(exc),
        "exit_code": exc.exit_code,
        "record": str(exc.record) if exc.record else None,
    }
    run = getattr(exc, "result", None)  # StepFailed, without importing the switch
    if run is not None and callable(getattr(run, "to_dict", None)):
        doc["run"] = run.to_dict()
    doc.update(exc.details or {})
    return doc


def launcher() -> Launcher:
    """How jobs run a task here (:class:`resilience.infra.commandline.Launcher`): the clone's
    `./run`, or the installed command in the working directory."""
    from resilience.infra.commandline import launcher as this_launcher

    return this_launcher(ROOT)


def caller_path(value: str) -> Path:
    """A path flag as the operator meant it: relative to the directory `./run` was called
    from (`./run` changes into the project), else to the working directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return Path(os.environ.get(CALLER_DIR_VARIABLE) or os.getcwd()) / path


def positive_int(flag: str, value: Any) -> int | None:
    """A whole number >= 1 from a flag, or InputError naming the flag."""
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        from resilience.errors import InputError

        raise InputError(f"{flag} must be a whole number of at least 1, not {str(value)[:20]!r}")
    return number


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def confirm_on_terminal(out: Any, yes: bool) -> Callable[[Any], bool] | None:
    """Ask on the terminal before a switch; without one, --yes is required. None with --yes
    (nobody to ask; that the run is unattended the task says on its own: ``unattended``)."""
    if yes:
        return None

    def ask(facts: Any) -> bool:
        if not sys.stdin.isatty():
            from resilience.errors import InputError

            raise InputError("no terminal to confirm on: run with --yes for unattended runs")
        out.err.print("plan:")
        for number, line in enumerate(facts.plan, 1):
            out.err.print(f"  {number}. {line}", markup=False)
        return input("proceed? [y/N] ").strip().lower() in ("y", "yes")

    return ask
