"""What the `mirror.*` tasks call: the feed's install and removal, the long-running mirror,
its PM2 entry, and its status."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from resilience.authstate.pgstore import connect
from resilience.config import ENV_PREFIX, Settings
from resilience.errors import DataError, ResilienceError
from resilience.infra.fsutil import atomic_write
from resilience.infra.pm2 import pm2_for
from resilience.infra.redact import Redactor, redact_dsn
from resilience.mirror import feed
from resilience.mirror.mirror import CycleResult, Mirror, mirror_dsn
from resilience.mirror.position import read_position
from resilience.runs.record import recorded_run

PLAN_INSTALL = [
    f"CREATE TABLE IF NOT EXISTS {feed.CHANGES_TABLE} (id, company_id, key_type, key_id, "
    "changed_at)",
    "CREATE OR REPLACE FUNCTION "
    + ", ".join((feed.KEYS_FUNCTION, feed.KEYS_UPDATE_FUNCTION, feed.AUTH_FUNCTION)),
    *[
        f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH STATEMENT"
        for name, table, event, *_ in feed.TRIGGERS
    ],
]
PLAN_REMOVE = [
    *[f"DROP TRIGGER IF EXISTS {name} ON {table}" for name, table, *_ in feed.TRIGGERS],
    "DROP FUNCTION IF EXISTS "
    + ", ".join((feed.KEYS_FUNCTION, feed.KEYS_UPDATE_FUNCTION, feed.AUTH_FUNCTION)),
    f"DROP TABLE IF EXISTS {feed.CHANGES_TABLE} (changes not yet applied are lost)",
]


def change_feed(settings: Settings, action: str, *, dry_run: bool) -> dict[str, Any]:
    """Install or remove the change feed (one transaction), or only say what would be done
    and what the database holds now (``dry_run``)."""
    dsn = mirror_dsn(settings)
    with recorded_run(settings, f"mirror.feed-{action}") as record:
        journal = record.journal
        journal.register_secret(dsn)
        with connect(dsn, timeout=settings.db_connect_timeout) as conn:
            before = feed.feed_status(conn)
            plan = PLAN_INSTALL if action == "install" else PLAN_REMOVE
            doc: dict[str, Any] = {
                "action": action,
                "dry_run": dry_run,
                "database": redact_dsn(dsn),
                "plan": plan,
                "before": before.to_dict(),
            }
            journal.event("preflight", f"change feed {action}: state before", **doc)
            if not dry_run:
                install = action == "install"
                after = feed.install_feed(conn) if install else feed.remove_feed(conn)
                conn.commit()
                doc["after"] = after.to_dict()
                journal.event("done", f"change feed {action}ed", after=doc["after"])
    doc["record"] = str(record.path) if record.path else None
    return doc


def run_mirror(
    settings: Settings,
    stop: threading.Event,
    *,
    on_event: Callable[[str], None] | None = None,
    on_cycle: Callable[[CycleResult], None] | None = None,
) -> int:
    """Follow until ``stop`` is set; returns the number of cycles."""
    mirror = Mirror(settings, on_event=on_event)
    return mirror.run(stop, on_cycle)


def mirror_status(settings: Settings, *, database: bool = True) -> dict[str, Any]:
    """The mirror as its position file says (lag, state, repairs) and, with ``database``,
    the feed's backlog as the database says."""
    now = datetime.now(UTC)
    doc: dict[str, Any] = {
        "mirror_dir": str(settings.mirror_dir),
        "lag_alert_s": settings.mirror_lag_alert,
    }
    try:
        position = read_position(settings.mirror_dir)
    except DataError as exc:
        position = None
        doc["error"] = str(exc)
    if position is None:
        doc["position"] = None
    else:
        doc["position"] = position.to_dict()
        doc["lag_s"] = position.lag_s(now)
    if database:
        try:
            dsn = mirror_dsn(settings)
            with connect(dsn, timeout=settings.db_connect_timeout) as conn:
                doc["feed"] = feed.feed_status(conn).to_dict()
        except ResilienceError as exc:
            doc["feed"] = {"error": Redactor(settings.secret_values()).text(str(exc))}
        except Exception as exc:  # a status never fails on a side source
            doc["feed"] = {"error": type(exc).__name__}
    lag = doc.get("lag_s")
    doc["lagging"] = lag is None or lag > settings.mirror_lag_alert
    return doc


def mirror_ecosystem(
    settings: Settings, project: Path, log_dir: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The mirror as a PM2 app: restarted when it exits, stopped with SIGINT and a grace."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    env = {**env, "TZ": "UTC"}
    return {
        "apps": [
            {
                "name": settings.mirror_app,
                "script": str(project / "run"),
                "args": ["mirror.run"],
                "cwd": str(project),
                "interpreter": "none",
                "autorestart": True,
                "kill_timeout": 10000,
                "time": True,
                "out_file": str(log_dir / "mirror.log"),
                "error_file": str(log_dir / "mirror.log"),
                "env": env,
            }
        ]
    }


def install_mirror(
    settings: Settings,
    project: Path,
    ecosystem_file: Path,
    log_dir: Path,
    *,
    dry_run: bool,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the mirror's ecosystem file and start (or restart) it under the deployment's
    PM2. Re-runs converge: the app is replaced by the file's definition."""
    ecosystem = mirror_ecosystem(settings, project, log_dir, env)
    plan: dict[str, Any] = {
        "app": settings.mirror_app,
        "ecosystem_file": str(ecosystem_file),
        "log_file": str(log_dir / "mirror.log"),
        "mirror_dir": str(settings.mirror_dir),
        "dry_run": dry_run,
        "env_names": sorted(ecosystem["apps"][0]["env"]),
    }
    if dry_run:
        return plan
    ecosystem_file.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(ecosystem_file, json.dumps(ecosystem, indent=2).encode())
    pm2 = pm2_for(settings)
    if pm2.describe(settings.mirror_app) is not None:
        pm2.delete(settings.mirror_app)  # the file's definition wins (env, args)
    pm2.start(ecosystem_file)
    app = pm2.require(settings.mirror_app)
    plan.update({"pid": app.pid, "status": app.status})
    return plan


def uninstall_mirror(settings: Settings) -> bool:
    pm2 = pm2_for(settings)
    if pm2.describe(settings.mirror_app) is None:
        return False
    pm2.delete(settings.mirror_app)
    return True
