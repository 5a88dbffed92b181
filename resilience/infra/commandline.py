"""How the tool was started, for what it tells the operator and for the jobs it writes.

Hints name the command the operator types: `baileys-resilience TASK` on a host where the
package is installed, `./run TASK` in a clone. Jobs (the crontab block, the PM2 apps of the
schedule, the monitor and the mirror) run a task the same way: from a clone
`cd <clone> && ./run TASK`; from the installed command `cd <settings dir> &&
<path>/baileys-resilience TASK`, in the directory it was installed from (its `.env` holds the
deployment's settings), by its absolute path (cron's PATH does not hold pipx's bin directory).
The console script says which by setting :data:`PROGRAM_VARIABLE` and
:data:`EXECUTABLE_VARIABLE` before any task runs.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Set by `baileys-resilience` (tasks.program) to its own name; unset under `./run`.
PROGRAM_VARIABLE = "BAILEYS_RESILIENCE_PROGRAM"
#: Set by `baileys-resilience` to the absolute path it was started by; unset under `./run`.
EXECUTABLE_VARIABLE = "BAILEYS_RESILIENCE_EXECUTABLE"


def operator_command(task: str) -> str:
    """`task` (with its flags) as the operator runs it here."""
    program = os.environ.get(PROGRAM_VARIABLE) or "./run"
    return f"{program} {task}"


def installed_command() -> bool:
    """Whether this process runs as the installed `baileys-resilience` (not `./run`)."""
    return bool(os.environ.get(PROGRAM_VARIABLE))


@dataclass(frozen=True)
class Launcher:
    """How a job runs a task on this host: `program` in the directory `cwd`."""

    program: str  # "./run" (the clone's, relative to cwd) or the console script's path
    cwd: Path  # the clone, or the directory of the deployment's settings (`.env`)

    @classmethod
    def clone(cls, project: Path) -> Launcher:
        return cls("./run", project)

    @property
    def installed(self) -> bool:
        return self.program != "./run"

    @property
    def script(self) -> str:
        """The program as an absolute path (PM2's `script`)."""
        return str(self.cwd / "run") if not self.installed else self.program

    def shell(self, words: Sequence[str]) -> str:
        """`cd CWD && PROGRAM WORDS...`, quoted for a shell (a crontab line)."""
        program = self.program if not self.installed else shlex.quote(self.program)
        line = " ".join([program, *(shlex.quote(w) for w in words)])
        return f"cd {shlex.quote(str(self.cwd))} && {line}"


def launcher(project: Path) -> Launcher:
    """This process's launcher: the installed command when it started this process (in the
    working directory), else the clone at `project`."""
    executable = os.environ.get(EXECUTABLE_VARIABLE)
    if executable:
        return Launcher(executable, Path.cwd())
    return Launcher.clone(project)


def as_launcher(where: Path | Launcher) -> Launcher:
    """A launcher as given, or the clone's at a project path."""
    return where if isinstance(where, Launcher) else Launcher.clone(where)
