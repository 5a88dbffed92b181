"""Our own long-running processes (the monitor, the mirror) as PM2 apps: one definition, one
install that converges, one removal.

Each runs ``./run <task>`` from the clone, or the installed ``baileys-resilience <task>`` in the
directory of the deployment's settings (:mod:`resilience.infra.commandline`), restarted by PM2
when it exits, stopped with SIGINT and a grace of ten seconds, its output in one log. Its
settings come from that directory's files; ``env`` (default: the ``RESILIENCE_*`` variables of
the installing environment) goes into the app's env (the ecosystem file is written 0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilience.config import ENV_PREFIX, Settings
from resilience.infra.commandline import Launcher, as_launcher
from resilience.infra.fsutil import atomic_write
from resilience.infra.pm2 import pm2_for


@dataclass(frozen=True)
class Daemon:
    app: str  # the PM2 app name
    task: str  # the invoke task it runs, e.g. "monitor.run"
    log_name: str  # its log file in the log directory


def ecosystem(
    daemon: Daemon, project: Path | Launcher, log_dir: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The PM2 ecosystem document of ``daemon``."""
    launch = as_launcher(project)
    if env is None:
        env = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    log = str(log_dir / daemon.log_name)
    return {
        "apps": [
            {
                "name": daemon.app,
                "script": launch.script,
                "args": [daemon.task],
                "cwd": str(launch.cwd),
                "interpreter": "none",
                "autorestart": True,
                "kill_timeout": 10000,
                "time": True,
                "out_file": log,
                "error_file": log,
                "env": {**env, "TZ": "UTC"},
            }
        ]
    }


def install(
    settings: Settings,
    daemon: Daemon,
    project: Path | Launcher,
    ecosystem_file: Path,
    log_dir: Path,
    *,
    dry_run: bool,
    env: Mapping[str, str] | None = None,
    shown: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the daemon's ecosystem file and start (or restart) it under the deployment's PM2;
    the plan (with ``shown`` added) is returned, and with ``dry_run`` nothing else happens.
    Re-runs converge: the app is replaced by the file's definition."""
    document = ecosystem(daemon, project, log_dir, env)
    plan: dict[str, Any] = {
        "app": daemon.app,
        "command": as_launcher(project).shell([daemon.task]),
        "ecosystem_file": str(ecosystem_file),
        "log_file": str(log_dir / daemon.log_name),
        **(shown or {}),
        "dry_run": dry_run,
        "env_names": sorted(document["apps"][0]["env"]),
    }
    if dry_run:
        return plan
    ecosystem_file.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ecosystem_file, json.dumps(document, indent=2).encode())
    pm2 = pm2_for(settings)
    if pm2.describe(daemon.app) is not None:
        pm2.delete(daemon.app)  # the file's definition wins (env, args)
    pm2.start(ecosystem_file)
    app = pm2.require(daemon.app)
    plan.update({"pid": app.pid, "status": app.status})
    return plan


def uninstall(settings: Settings, app: str) -> bool:
    """Remove the app from PM2; False when it was not there."""
    pm2 = pm2_for(settings)
    if pm2.describe(app) is None:
        return False
    pm2.delete(app)
    return True
