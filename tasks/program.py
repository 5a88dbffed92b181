"""`baileys-resilience`: the operator's command on a production host (the console script of the
installed package). The operator's namespaces only; the drill rig (stack, drill, bench) and the
developers' tasks (lint, test) stay behind `./run` in a clone."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import metadata

from invoke.collection import Collection
from invoke.program import Program

from tasks import (
    backup,
    check,
    cleanup,
    diagnose,
    health,
    mirror,
    monitor,
    restore,
    runs,
    schedule,
    status,
)

#: The namespaces an operator runs, also from cron and PM2 (`schedule.install`).
OPERATOR_NAMESPACES = (restore, backup, cleanup, schedule, monitor, mirror, runs)


def operator_namespace() -> Collection:
    ns = Collection(*(Collection.from_module(module) for module in OPERATOR_NAMESPACES))
    ns.add_task(health.health)
    ns.add_task(diagnose.diagnose)
    ns.add_task(check.check)
    ns.add_task(status.status)
    return ns


def _version() -> str:
    try:
        return metadata.version("baileys-resilience")
    except metadata.PackageNotFoundError:  # a clone that was never installed
        return "unknown"


program = Program(
    name="baileys-resilience",
    binary="baileys-resilience",
    binary_names=["baileys-resilience"],
    namespace=operator_namespace(),
    version=_version(),
)


def main() -> None:
    from resilience.infra.commandline import EXECUTABLE_VARIABLE, PROGRAM_VARIABLE

    os.environ[PROGRAM_VARIABLE] = "baileys-resilience"  # hints name this command
    # jobs it writes (schedule, monitor, mirror) run it by this path
    started_as = sys.argv[0] if os.path.isfile(sys.argv[0]) else shutil.which(program.binary or "")
    if started_as:
        os.environ[EXECUTABLE_VARIABLE] = os.path.abspath(started_as)
    program.run()
