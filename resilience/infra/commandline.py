"""The command an operator types, for hints: `baileys-resilience TASK` on a host where the
package is installed, `./run TASK` in a clone. The console script says which by setting
:data:`PROGRAM_VARIABLE` before any task runs."""

from __future__ import annotations

import os

#: Set by `baileys-resilience` (tasks.program) to its own name; unset under `./run`.
PROGRAM_VARIABLE = "BAILEYS_RESILIENCE_PROGRAM"


def operator_command(task: str) -> str:
    """`task` (with its flags) as the operator runs it here."""
    program = os.environ.get(PROGRAM_VARIABLE) or "./run"
    return f"{program} {task}"
